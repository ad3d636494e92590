"""Prometheus metrics of Courier, labelled by destination; served by ``--metrics-port``.

The same port answers ``/healthz`` and ``/readyz`` (see :mod:`courier.core.health`).

One port for Courier's and the Temporal SDK's metrics: the SDK keeps its own Prometheus
exporter (``PrometheusConfig``, in Rust, with its names, histogram buckets and units
unchanged), bound to a free ephemeral port on 127.0.0.1 only; each ``/metrics`` request reads
that endpoint (within :data:`SDK_READ_TIMEOUT_S`) and appends its text after Courier's own. A
scrape the SDK's endpoint does not answer still gets Courier's metrics, and
``courier_collect_errors_total{source="temporal_sdk"}`` counts it. The SDK's ``MetricBuffer``
was the other way: it hands out raw updates that Courier would have to turn into Prometheus
counters, gauges and histograms itself (the buckets included), and it must be drained whether or
not anyone scrapes; the exporter already does all of it. Both parts are served in the classic
text format (0.0.4), which the SDK's exporter writes, so the one response is one format.

Cardinality is bounded: labels are destinations, topics, partitions and small fixed sets
(outcomes, kinds), never a record or a key.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import logging
import os
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from courier.core.health import HEALTH, Health
from courier.core.logs import Throttle

log = logging.getLogger("courier.metrics")

HOST_ENV = "COURIER_METRICS_HOST"
"""Address the metrics (and health) server binds to; 127.0.0.1 unless set (in a pod: 0.0.0.0)."""

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
EXPORT_ATTEMPTS = Counter(
    "courier_export_attempts",
    "Export attempts (one write of a record, or of a batch, to the destination), by outcome: "
    "success, retryable, permanent or unexpected.",
    ["destination", "outcome"],
)
DEAD_LETTERED = Counter(
    "courier_records_dead_lettered",
    "Records written to their destination's dead-letter topic ((none): records without a route).",
    ["destination"],
)
CONSUMER_LAG_RECORDS = Gauge(
    "courier_consumer_lag_records",
    "Records of the partition ingest has not handed off yet: its log end (the last stable "
    "offset under read_committed) minus the lowest offset not handed off.",
    ["topic", "partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "courier_consumer_lag_seconds",
    "How far behind the partition's hand-off is: 0 without lag, else now minus the timestamp of "
    "the oldest record read and not handed off (or, none being read yet, of the last one "
    "handed off).",
    ["topic", "partition"],
)
LAST_COMMIT = Gauge(
    "courier_last_commit_timestamp_seconds",
    "Unix time of ingest's last successful offset commit, or of its last commit interval that "
    "found everything handed off already committed.",
)
DESTINATION_BACKLOG = Gauge(
    "courier_destination_backlog_records",
    "Export tasks waiting in the destination's task queue (records in per-record mode, batches "
    "of up to batch_size records in batch mode), as Temporal reports it (approximate).",
    ["destination"],
)
DESTINATION_OLDEST_PENDING = Gauge(
    "courier_destination_oldest_pending_seconds",
    "Age of the oldest export task waiting in the destination's task queue.",
    ["destination"],
)
DESTINATION_WORKERS = Gauge(
    "courier_destination_workers",
    "Workers polling the destination's task queue (seen in the last minute).",
    ["destination"],
)
DESTINATION_RATE_LIMIT = Gauge(
    "courier_destination_rate_limit",
    "The destination's effective rate limit (records/s) on its task queue: an override "
    "(courier limit, rate control) or the workers' rate_limit; 0 when unlimited.",
    ["destination"],
)
COLLECT_ERRORS = Counter(
    "courier_collect_errors",
    "Failures reading what a metric reports, by source: task_queue (a destination's queue from "
    "Temporal), kafka (log end offsets for the consumer lag), temporal_sdk (the SDK's metrics "
    "for /metrics).",
    ["source"],
)
COLLECT_SOURCES = ("task_queue", "kafka", "temporal_sdk")
for _source in COLLECT_SOURCES:  # at 0 from the start, so rate() and increase() see the first
    COLLECT_ERRORS.labels(_source)
BUILD_INFO = Gauge("courier_build_info", "Always 1; the version of Courier running.", ["version"])

SDK_READ_TIMEOUT_S = 1.0
"""The longest a scrape waits for the Temporal SDK's metrics before serving without them."""


def version() -> str:
    """Courier's installed version ("unknown" when run from a tree that is not installed)."""
    try:
        return importlib.metadata.version("courier")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO.labels(version()).set(1)


def record_success(destination: str, *, count: int, seconds: float) -> None:
    """Count a successful export attempt."""
    EXPORTED.labels(destination).inc(count)
    EXPORT_SECONDS.labels(destination).observe(seconds)
    EXPORT_ATTEMPTS.labels(destination, "success").inc()


FailureKind = Literal["retryable", "permanent", "unexpected"]


def record_failure(destination: str, *, kind: FailureKind, count: int) -> None:
    """Count a failed export attempt and its records."""
    EXPORT_FAILURES.labels(destination, kind).inc(count)
    EXPORT_ATTEMPTS.labels(destination, kind).inc()


_sdk_address: str | None = None
_sdk_errors = Throttle()


def append_sdk_metrics(address: str | None) -> None:
    """Append the Temporal SDK's metrics, read from ``host:port`` (loopback), to ``/metrics``."""
    global _sdk_address
    _sdk_address = address


def _sdk_exposition(address: str) -> bytes:
    """The SDK exporter's answer to ``GET /metrics`` at ``address``; raises if there is none."""
    host, _, port = address.rpartition(":")
    # http.client, not urllib: no HTTP proxy from the environment for a loopback address.
    connection = http.client.HTTPConnection(host, int(port), timeout=SDK_READ_TIMEOUT_S)
    try:
        connection.request("GET", "/metrics")
        answer = connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise OSError(f"answered {answer.status}")
        return body
    finally:
        connection.close()


def exposition() -> bytes:
    """Courier's metrics, then the Temporal SDK's (if :func:`append_sdk_metrics` set them up)."""
    address = _sdk_address
    sdk = b""
    if address is not None:
        try:
            sdk = _sdk_exposition(address)
        except (OSError, http.client.HTTPException, ValueError) as err:
            COLLECT_ERRORS.labels("temporal_sdk").inc()
            if _sdk_errors.due():
                log.warning(
                    "cannot read the Temporal SDK's metrics from %s (%s); /metrics serves "
                    "Courier's own without them",
                    address,
                    err,
                )
    own = generate_latest(REGISTRY)
    if sdk and not own.endswith(b"\n"):
        own += b"\n"
    return own + sdk


def bind_host() -> str:
    """The address to serve metrics on: ``$COURIER_METRICS_HOST``, else 127.0.0.1."""
    return os.environ.get(HOST_ENV) or "127.0.0.1"


_Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def health_and_metrics_app(health: Health = HEALTH) -> _Wsgi:
    """A WSGI app: ``/healthz``, ``/readyz`` from ``health``, anything else the metrics
    (:func:`exposition`)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            check = health.liveness() if path == "/healthz" else health.readiness()
            status = "200 OK" if check.ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{check.reason}\n".encode()]
        body = exposition()
        start_response(
            "200 OK",
            [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds: no access log."""


def serve(port: int, host: str | None = None) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` (a daemon thread)."""
    server = make_server(
        host or bind_host(),
        port,
        health_and_metrics_app(),
        server_class=_Server,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
