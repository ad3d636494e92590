"""Pacing: a worker sends its records evenly spaced, at its share of the destination's rate.

The Temporal server enforces a destination's rate limit across all its workers, but only per
activity, and its limiter starts with a full bucket: in the first second of a backlog it hands
out about twice the limit, and in batch mode one activity carries many records. A partner that
allows 5 requests per second answers 429 to either. Each worker therefore also spaces its own
records at ``rate / workers`` with a burst of one (a leaky bucket, ``aiolimiter``), which keeps
every 1-second window within the limit plus one while the server still holds the cluster-wide
rate. ``worker.py`` keeps the pacer's rate current.
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter


class Pacer:
    """Spaces records at most ``rate`` per second, no burst; no rate means no pacing."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._limiter: AsyncLimiter | None = None

    def set_rate(self, rate: float | None) -> None:
        """Change the pace (records/s); None turns pacing off."""
        if rate == self.rate:
            return
        self.rate = rate
        self._limiter = AsyncLimiter(1, 1 / rate) if rate else None

    async def wait(self, count: int = 1, *, until: float | None = None) -> bool:
        """Return when ``count`` more records may go, or at ``until`` (event loop time) at the
        latest; whether the pace was kept."""
        for _ in range(count):
            limiter = self._limiter
            if limiter is None:
                return True
            try:
                async with asyncio.timeout_at(until):
                    await limiter.acquire()
            except TimeoutError:
                return False
        return True
