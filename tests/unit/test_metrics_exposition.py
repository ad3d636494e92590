"""One ``/metrics``: Courier's metrics, then the Temporal SDK's read from its loopback exporter."""

from __future__ import annotations

import http.server
import socket
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from courier.core import metrics

SDK_TEXT = (
    b"# HELP temporal_request Count of client request successes by rpc name\n"
    b"# TYPE temporal_request counter\n"
    b'temporal_request{operation="StartWorkflowExecution"} 3\n'
)


class _Sdk(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(SDK_TEXT)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def sdk_exporter() -> Iterator[str]:
    """A stand-in for the SDK's Prometheus exporter on a loopback port: its ``host:port``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sdk)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        metrics.append_sdk_metrics(None)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sdk_errors() -> float:
    return (
        REGISTRY.get_sample_value("courier_collect_errors_total", {"source": "temporal_sdk"}) or 0
    )


def test_the_build_info_names_the_version() -> None:
    text = metrics.exposition().decode()
    assert f'courier_build_info{{version="{metrics.version()}"}} 1.0' in text


def test_the_sdk_metrics_follow_courier_s(sdk_exporter: str) -> None:
    metrics.append_sdk_metrics(sdk_exporter)
    text = metrics.exposition()
    assert text.endswith(SDK_TEXT)
    assert b"courier_build_info{" in text.split(SDK_TEXT)[0]


def test_without_the_sdk_exporter_courier_s_metrics_are_served_and_the_failure_counted(
    sdk_exporter: str,
) -> None:
    metrics.append_sdk_metrics(f"127.0.0.1:{closed_port()}")
    before = sdk_errors()
    text = metrics.exposition().decode()
    assert "courier_build_info{" in text and "temporal_request" not in text
    assert sdk_errors() == before + 1


def test_the_metrics_port_serves_both_in_the_classic_text_format(sdk_exporter: str) -> None:
    port = closed_port()
    metrics.serve(port, "127.0.0.1")
    metrics.append_sdk_metrics(sdk_exporter)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics",
        # What Prometheus asks for: OpenMetrics first. The answer is one format all the same.
        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        body = answer.read().decode()
        content_type = answer.headers["Content-Type"]
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "courier_build_info{" in body and 'temporal_request{operation="' in body
    assert "# EOF" not in body
