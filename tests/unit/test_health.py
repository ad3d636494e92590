"""``/healthz`` and ``/readyz`` next to ``/metrics``: what a kubelet's probes see."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request

from courier import metrics
from courier.health import HEALTH, Check, Health


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_readiness_follows_the_process_state() -> None:
    health = Health()
    assert not health.readiness().ok and health.readiness().reason == "starting"
    health.set_ready(True)
    assert health.readiness().ok
    health.set_ready(False, "shutting down")
    assert health.readiness() == Check(False, "shutting down")
    assert health.liveness().ok


def test_a_stuck_loop_is_not_live_and_not_ready() -> None:
    health = Health(stale_after_s=0.05)
    health.set_ready(True)
    health.beat()
    assert health.liveness().ok
    time.sleep(0.1)
    assert not health.liveness().ok and "event loop stuck" in health.liveness().reason
    assert not health.readiness().ok


async def test_keep_beating_keeps_it_live() -> None:
    health = Health(stale_after_s=0.2)
    task = asyncio.create_task(health.keep_beating(0.02))
    await asyncio.sleep(0.4)
    assert health.liveness().ok
    task.cancel()


def test_the_metrics_port_serves_health_and_metrics() -> None:
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    HEALTH.set_ready(False, "connecting to Temporal at x:7233")
    HEALTH.beat()
    assert get(port, "/readyz") == (503, "connecting to Temporal at x:7233\n")
    assert get(port, "/healthz") == (200, "live\n")
    HEALTH.set_ready(True)
    assert get(port, "/readyz") == (200, "running\n")
    status, body = get(port, "/metrics")
    assert status == 200 and "courier_records_exported" in body
