"""Benchmarks of Courier against the local stack: run the suite with ``python -m benchmarks``."""
