"""``/healthz`` and ``/readyz`` next to ``/metrics``: what a kubelet's probes see."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from courier.core import metrics
from courier.core.health import HEALTH, Check, Health


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` different free ports (each held until all are found, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


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


def test_a_process_waiting_for_temporal_is_live_but_not_ready(tmp_path: Path) -> None:
    """What the kubelet sees of a worker whose Temporal is down: alive (no restart), unready."""
    temporal_port, metrics_port = free_ports(2)  # nothing listens on temporal_port
    config = tmp_path / "courier.yaml"
    config.write_text(
        "kafka: {topics: [t]}\n"
        f"temporal: {{address: '127.0.0.1:{temporal_port}'}}\n"
        "destinations: [{name: f, kind: file, path: out.jsonl}]\nroutes: {default: f}\n"
    )
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "courier"), "worker", "--workflows", "-c", str(config)],
        env={**os.environ, "COURIER_METRICS_PORT": str(metrics_port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []
    failed_attempt = threading.Event()

    def read_stderr() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            lines.append(raw.decode())
            if "cannot reach Temporal" in lines[-1]:
                failed_attempt.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        answer: tuple[int, str] | None = None
        while time.monotonic() < deadline:
            try:
                answer = get(metrics_port, "/readyz")
                break
            except OSError:
                time.sleep(0.2)
        assert answer == (503, f"connecting to Temporal at 127.0.0.1:{temporal_port}\n")
        # After a failed connection attempt (by then SIGTERM is the process's to handle: on a
        # loaded machine a fixed sleep could signal it before its handlers were installed).
        assert failed_attempt.wait(30), "".join(lines)
        assert get(metrics_port, "/healthz") == (200, "live\n")
        assert get(metrics_port, "/readyz")[0] == 503
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        reader.join(timeout=5)
    assert process.returncode == 0, "".join(lines)
