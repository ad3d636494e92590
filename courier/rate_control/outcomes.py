"""What a worker's export attempts of one destination met, counted for rate control.

The export activity (``activities.export.ExportActivity._write``, the one place that maps a
destination's errors to retry decisions) counts each attempt here as it ends; the worker's
rate control client (``courier.rate_control.client``) takes the counts as one window every
second and reports it. Worker-side only: the workflow never sees this class, only the
``OutcomeReport`` made from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace


@dataclass
class AttemptOutcomes:
    """Counts of export attempts since the worker last reported them to rate control."""

    answered: int = 0
    """Written, or refused for good: either way the destination is up."""
    unavailable: int = 0
    throttled: int = 0
    not_reached: int = 0
    """Failed before reaching the destination (record gone from Kafka, a mapping failing for
    it): they say nothing about the destination."""
    last_error: str = ""
    started: float = field(default_factory=time.monotonic)

    def take(self) -> AttemptOutcomes:
        """The counts so far; starts a new window."""
        window = replace(self)
        self.answered = self.unavailable = self.throttled = self.not_reached = 0
        self.last_error = ""
        self.started = time.monotonic()
        return window

    def __bool__(self) -> bool:
        return bool(self.answered or self.unavailable or self.throttled or self.not_reached)
