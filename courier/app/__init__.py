"""Courier as one process: ingest and workers side by side (``courier run``)."""
