"""Pacing: a worker starts its export attempts evenly spaced, at its share of the queue's rate.

The Temporal server enforces a destination's rate limit across all its workers, but its
limiter starts with a full bucket: in the first second of a backlog it hands out about twice
the limit. A partner that allows 5 requests per second answers 429 to that. Each worker
therefore also spaces its own attempts at ``rate / workers`` with a burst of one (a leaky
bucket, ``aiolimiter``), which keeps every 1-second window within the limit plus one while the
server still holds the cluster-wide rate. ``worker.py`` keeps the pacer's rate current.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter


class Pacer:
    """Spaces attempts at most ``rate`` per second, no burst; no rate means no pacing."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._limiter: AsyncLimiter | None = None

    def set_rate(self, rate: float | None) -> None:
        """Change the pace (attempts/s); None turns pacing off."""
        if rate == self.rate:
            return
        self.rate = rate
        self._limiter = AsyncLimiter(1, 1 / rate) if rate else None

    async def wait(self) -> None:
        """Return when the next attempt may start."""
        limiter = self._limiter
        if limiter is not None:
            await limiter.acquire()
