"""A Prometheus server for tests: Debian's binary on 127.0.0.1, a config of our own, its HTTP API.

``make prometheus`` unpacks Debian's ``prometheus`` package under ``.tools/prometheus`` (no
service, nothing system-wide); :func:`binary` finds it there, in ``$COURIER_PROMETHEUS_BIN_DIR``
or on the ``PATH``. :class:`Prometheus` writes a config scraping the given targets every
``interval`` seconds and evaluating the given rule files as often, starts the server as a child
process (stopped by its PID), waits until it is ready and answers the API calls tests make.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "prometheus" / "usr" / "bin"
BIN_DIR_ENV = "COURIER_PROMETHEUS_BIN_DIR"


def binary(name: str = "prometheus") -> Path | None:
    """``prometheus`` or ``promtool``: from ``$COURIER_PROMETHEUS_BIN_DIR``, ``.tools/`` (``make
    prometheus``) or the ``PATH``; None when none has it."""
    candidates = [Path(d) / name for d in (os.environ.get(BIN_DIR_ENV), TOOLS_BIN) if d]
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrometheusError(Exception):
    """Prometheus did not start, or its API answered with an error."""


class Prometheus:
    """One Prometheus server in ``workdir``, scraping ``targets`` (``host:port``)."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        *,
        rule_files: Sequence[Path] = (),
        interval: float = 1.0,
        job: str = "courier",
        executable: Path | None = None,
    ) -> None:
        found = executable or binary()
        if found is None:
            raise PrometheusError(
                "no prometheus binary: run `make prometheus` (Debian's package, unpacked under "
                f".tools/) or set {BIN_DIR_ENV}"
            )
        self.executable = found
        self.workdir = workdir
        self.targets = list(targets)
        self.rule_files = list(rule_files)
        self.interval = interval
        self.job = job
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The prometheus.yml it runs with."""
        every = f"{round(self.interval * 1000)}ms"
        return {
            "global": {
                "scrape_interval": every,
                "scrape_timeout": every,
                "evaluation_interval": every,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": self.job, "static_configs": [{"targets": self.targets}]}
            ],
        }

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the server and wait until ``/-/ready`` answers; :class:`PrometheusError` if the
        process exits or is not ready in ``timeout`` seconds (with its log's last lines)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.port = free_port()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(self.executable),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout:.0f}s: {self.log_tail()}")

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its log, on one line each separated by `` | ``."""
        if not self.log.exists():
            return "(no log)"
        return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the HTTP API -------------------------------------------------------------------------

    def api(self, path: str, **params: Any) -> Any:
        """``GET /api/v1/PATH``'s ``data``; :class:`PrometheusError` with its error if not ok."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(
                f"/api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) ``expr`` evaluates to now."""
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        """The series ``expr`` gives between ``start`` and ``end`` (Unix seconds)."""
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending or firing): ``labels``, ``annotations``, ``state``, …"""
        return list(self.api("alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups with each rule's health and last error."""
        return list(self.api("rules")["groups"])

    def targets_up(self) -> list[str]:
        """Scrape URLs of the targets whose last scrape succeeded."""
        active = self.api("targets")["activeTargets"]
        return [t["scrapeUrl"] for t in active if t.get("health") == "up"]
