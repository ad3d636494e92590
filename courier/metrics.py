"""Prometheus metrics of Courier, labelled by destination; served by ``--metrics-port``."""

from __future__ import annotations

from typing import Literal

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EXPORTED = Counter(
    "courier_records_exported", "Records written to their destination.", ["destination"]
)
EXPORT_FAILURES = Counter(
    "courier_export_failures",
    "Records of failed export attempts, by kind: retryable (will be retried), permanent (the "
    "record fails) or unexpected (an error Courier does not know, retried; a bug to report).",
    ["destination", "kind"],
)
EXPORT_SECONDS = Histogram(
    "courier_export_seconds", "Time one export attempt took.", ["destination"]
)
DESTINATION_CONNECTED = Gauge(
    "courier_destination_connected",
    "1 while this worker process has its destination open and polls its queue; 0 while it "
    "retries opening it (its records wait in Temporal).",
    ["destination"],
)
CIRCUIT_OPEN = Gauge(
    "courier_circuit_open",
    "1 while the destination's circuit is open (its queue probes at one attempt per few "
    "seconds after attempts in a row found it unavailable), as last applied by this worker.",
    ["destination"],
)
RATE_OVERRIDE = Gauge(
    "courier_rate_override",
    "The queue rate (activities/s) rate control set for the destination: the probe rate while "
    "the circuit is open, the adaptive rate after 429s; 0 when none (the configured limit).",
    ["destination"],
)
DESTINATION_CONGESTED = Gauge(
    "courier_destination_congested",
    "1 while ingest sees the destination congested (a new export would wait longer than "
    "ingest.congested_after in its queue) and starts its records' workflows at low priority.",
    ["destination"],
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


FailureKind = Literal["retryable", "permanent", "unexpected"]


def record_failure(destination: str, *, kind: FailureKind, count: int) -> None:
    """Count the records of a failed export attempt."""
    EXPORT_FAILURES.labels(destination, kind).inc(count)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` for Prometheus on ``host:port``."""
    start_http_server(port, addr=host)
