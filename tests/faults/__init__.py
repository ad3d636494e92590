"""The fault matrix: Courier against the real stack under faults (docs/reliability.md)."""
