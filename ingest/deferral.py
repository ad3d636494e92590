"""When a rate-bound destination's record gets its first workflow task (per-record mode).

A destination whose queue is bounded by a rate (its ``rate_limit``, or an operator's ``courier
limit``) takes one export every ``1/rate`` seconds. A record handed to it now gets its turn
after the queue's backlog and after every record ingest handed it since, so ingest can tell
when that turn comes. Until shortly before it, the record's workflow has nothing to do but
queue its export, and on the shared Temporal server a start with its first workflow task and
queued export costs 2–3 times the start alone. So the workflow is started with a start delay:
it exists at once (the offset is committed, nothing is lost, the Temporal UI shows it Running)
and its first workflow task runs ``lead_s`` before its turn, which keeps ``lead_s`` of exports
queued for the destination's workers.

:class:`TurnSchedule` is the arithmetic only; ``ingest/priority.py`` feeds it what the server
reports of each queue.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Lane:
    rate: float | None = None
    """Exports/s the destination's queue drains at, when a rate bounds it."""
    clear_at: float = 0.0
    """When the backlog the server last reported is gone."""
    cursor: float = 0.0
    """The turn of the last record handed to the destination."""
    deferred: deque[float] = field(default_factory=deque)
    """When the first workflow tasks of the records deferred so far run, in order."""

    def pending(self, now: float) -> int:
        """Deferred records whose export is not queued yet."""
        while self.deferred and self.deferred[0] <= now:
            self.deferred.popleft()
        return len(self.deferred)


class TurnSchedule:
    """The turns of rate-bound destinations' records, and the start delays they imply."""

    def __init__(self, *, lead_s: float, max_delay_s: float) -> None:
        self.lead_s = lead_s
        self.max_delay_s = max_delay_s
        self._lanes: dict[str, _Lane] = {}

    def observe(self, destination: str, *, now: float, backlog: int, rate: float | None) -> None:
        """What the server reports of the destination's queue: its backlog and bounding rate."""
        lane = self._lanes.setdefault(destination, _Lane())
        lane.rate = rate if rate is not None and rate > 0 else None
        if lane.rate is None:
            return
        lane.clear_at = now + backlog / lane.rate
        # The deferred records still ahead take their turns after the backlog; a cursor further
        # out was reckoned at a lower rate (a limit that was raised).
        lane.cursor = min(lane.cursor, lane.clear_at + lane.pending(now) / lane.rate)

    def wait(self, destination: str, now: float) -> float | None:
        """Seconds until a record handed off now gets its turn; None when no rate bounds it."""
        lane = self._lanes.get(destination)
        if lane is None or lane.rate is None:
            return None
        return max(now, lane.clear_at, lane.cursor + 1 / lane.rate) - now

    def take(self, destination: str, now: float) -> float:
        """Hand a record to ``destination`` now: the seconds its first workflow task waits."""
        wait = self.wait(destination, now)
        if wait is None:
            return 0.0
        lane = self._lanes[destination]
        lane.cursor = now + wait
        delay = min(wait - self.lead_s, self.max_delay_s)
        if delay <= 0:
            return 0.0
        lane.pending(now)
        lane.deferred.append(now + delay)
        return delay
