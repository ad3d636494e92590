"""The config section ``destinations[].rate_control``: which reactions a destination has.

Part of every destination's config (``activities.base.DestinationConfig.rate_control``); the
worker sends these settings with each outcome report, so the controller always decides with
the settings of the workers that serve the destination now.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from courier.core.durations import Duration


class RateControlConfig(BaseModel):
    """How a destination's rate reacts to its answers (circuit breaker and adaptive rate)."""

    model_config = ConfigDict(extra="forbid")

    circuit_breaker: bool = Field(
        default=True,
        description="Open the circuit after failure_threshold attempts in a row find the "
        "destination unavailable (refused, timeout, 5xx): the queue then runs one probe per "
        "probe_interval until one is answered, and records wait in Temporal.",
    )
    failure_threshold: int = Field(
        default=5, ge=1, description="Unavailable attempts in a row that open the circuit."
    )
    probe_interval: Duration = Field(
        default=timedelta(seconds=5), description="Time between probes while the circuit is open."
    )
    adaptive: bool = Field(
        default=True,
        description="Halve the rate on 429 answers and raise it back step by step (AIMD) up to "
        "the limit, for all workers of the destination.",
    )
