"""Liveness and readiness of a Courier process, served next to its metrics.

``/healthz`` (liveness) answers 200 while the process's event loop keeps turning: a loop that has
not beaten for :data:`STALE_AFTER_S` is stuck, and restarting the process is the cure.
``/readyz`` (readiness) answers 200 once the process is connected to Temporal and running, and
503 before that and while it shuts down. A Temporal or Kafka outage makes a process unready,
never dead: a restart would not bring the server back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

STALE_AFTER_S = 30.0
"""A loop that has not beaten for this long is reported not live."""
BEAT_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Check:
    """One answer of a health endpoint: ok or not, and why."""

    ok: bool
    reason: str


class Health:
    """The process's health state; thread-safe (the HTTP server reads it from its threads)."""

    def __init__(self, *, stale_after_s: float = STALE_AFTER_S) -> None:
        self._lock = threading.Lock()
        self._stale_after_s = stale_after_s
        self._beat = time.monotonic()
        self._ready = False
        self._reason = "starting"

    def beat(self) -> None:
        """Record that the event loop is turning."""
        with self._lock:
            self._beat = time.monotonic()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Mark the process ready (serving) or not, with a short reason for the latter."""
        with self._lock:
            self._ready = ready
            self._reason = reason or ("running" if ready else "not ready")

    def liveness(self) -> Check:
        """Live while the event loop beat within the last ``stale_after_s`` seconds."""
        with self._lock:
            age = time.monotonic() - self._beat
        if age > self._stale_after_s:
            return Check(False, f"event loop stuck: no beat for {age:.0f}s")
        return Check(True, "live")

    def readiness(self) -> Check:
        """Ready once connected and running; not while starting or stopping."""
        live = self.liveness()
        if not live.ok:
            return live
        with self._lock:
            return Check(self._ready, self._reason)

    async def keep_beating(self, interval_s: float = BEAT_INTERVAL_S) -> None:
        """Beat every ``interval_s`` until cancelled (run it as a task on the process's loop)."""
        while True:
            self.beat()
            await asyncio.sleep(interval_s)


HEALTH = Health()
"""The process's health, set by the CLI and served by :func:`courier.core.metrics.serve`."""
