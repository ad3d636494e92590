"""Benchmarks of Courier against the local stack (run them as ``python -m benchmarks.<name>``)."""
