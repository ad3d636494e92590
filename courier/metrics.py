"""Prometheus metrics of Courier, labelled by destination; served by ``--metrics-port``."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

EXPORTED = Counter(
    "courier_records_exported", "Records written to their destination.", ["destination"]
)
EXPORT_FAILURES = Counter(
    "courier_export_failures",
    "Failed export attempts, by whether they will be retried.",
    ["destination", "kind"],
)
EXPORT_SECONDS = Histogram(
    "courier_export_seconds", "Time one export attempt took.", ["destination"]
)
INGESTED = Counter(
    "courier_records_ingested",
    "Records ingest finished with, by outcome: started (a new workflow), existing (already "
    "handed off) or skipped (no route under unmatched: skip).",
    ["topic", "outcome"],
)
COMMITS = Counter("courier_offset_commits", "Offset commits ingest made.")
HAND_OFF_FAILURES = Counter(
    "courier_hand_off_failures",
    "Records ingest could not hand off as they are (too large, unencodable, refused, a bug); "
    "each got a workflow that fails with the reason.",
    ["topic"],
)
TOPIC_ID_CHANGES = Counter(
    "courier_topic_id_changes",
    "Topics seen deleted and created again under the same name (a new topic ID).",
    ["topic"],
)


def record_success(destination: str, *, count: int, seconds: float) -> None:
    """Count a successful export attempt."""
    EXPORTED.labels(destination).inc(count)
    EXPORT_SECONDS.labels(destination).observe(seconds)


def record_failure(destination: str, *, permanent: bool, count: int) -> None:
    """Count a failed export attempt."""
    EXPORT_FAILURES.labels(destination, "permanent" if permanent else "retryable").inc(count)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` for Prometheus on ``host:port``."""
    start_http_server(port, addr=host)
