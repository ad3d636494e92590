"""What every destination kind shares: its config base and the ``Destination`` protocol.

A destination kind is one module that defines a config model (a subclass of
:class:`DestinationConfig` with ``kind: Literal["..."]`` and ``create()``) and a class
implementing :class:`Destination`, plus one line in ``activities.registry``. What the rest of
Courier needs to know about a kind it asks the config model, never the kind's name:
``describe_preview`` (``courier map``) and ``deployment_needs`` (``courier deploy k8s``); the
config reference is made from the model's fields.

Lifecycle of a destination inside a worker process, in order:

1. ``config.create()`` — build it from its validated config (secrets already resolved).
2. ``await open()`` — once per worker process: connect, create pools, create tables or files.
3. ``await write(batch, pace=…)`` — any number of times, concurrently up to ``max_concurrency``;
   idempotent per ``OutgoingRecord.idempotency_key``; awaits ``pace`` before sending records
   (the spacing of the rate limit); raises ``activities.errors`` types.
4. ``await close()`` — once, on worker shutdown.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePath
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from courier.core.durations import Duration
from courier.rate_control.config import RateControlConfig
from workflows.types import DestinationPolicy, OutgoingRecord, RetrySpec

TASK_QUEUE_PREFIX = "courier-dest-"

Pace = Callable[[int], Awaitable[None]]
"""``await pace(n)`` returns when ``n`` more records may go out under the destination's rate."""


async def no_pace(count: int) -> None:
    """The pace of a destination without a rate limit: never waits."""


class RetryConfig(BaseModel):
    """How a destination's failed exports are retried (Temporal activity retry policy)."""

    model_config = ConfigDict(extra="forbid")

    initial_interval: Duration = Field(
        default=timedelta(seconds=1), description="Delay before the first retry."
    )
    backoff_coefficient: float = Field(
        default=2.0, ge=1.0, description="Each retry waits this many times longer than the last."
    )
    maximum_interval: Duration = Field(
        default=timedelta(minutes=1), description="Upper bound of the delay between retries."
    )
    maximum_attempts: int = Field(
        default=0,
        ge=0,
        description="Attempts before the export fails; 0 retries forever, so a destination "
        "that is down builds a backlog instead of failing records.",
    )


class TimeoutConfig(BaseModel):
    """Time limits of one export attempt and of all attempts together."""

    model_config = ConfigDict(extra="forbid")

    attempt: Duration = Field(
        default=timedelta(seconds=30), description="Longest one export attempt may run."
    )
    total: Duration | None = Field(
        default=None,
        description="Longest an export may take over all its retries; unset means no limit.",
    )
    heartbeat: Duration | None = Field(
        default=timedelta(seconds=5),
        description="An attempt whose worker sends no heartbeat for this long (a worker that "
        "died or hangs) is retried elsewhere, instead of after the whole attempt timeout; "
        "unset turns heartbeats off.",
    )


@dataclass(frozen=True)
class DeploymentNeeds:
    """What a destination's workers need from where they run (``courier deploy k8s``)."""

    single_writer: bool = False
    """At most one worker process at a time, also while a new version rolls out."""
    data_dirs: tuple[PurePath, ...] = ()
    """Directories the workers write to that must outlive a worker (relative: to its cwd)."""
    why: str = ""
    """Why, in a few words for the operator, e.g. "the sink locks its file"."""


def batch_size_field(default: int) -> Any:
    """The ``batch_size`` field with a kind's own default (a kind redeclares it to change it)."""
    return Field(
        default=default,
        ge=1,
        le=10_000,
        description="Batch mode: most records one export activity carries. With a rate_limit an "
        "activity carries at most one second of it (5 records at 5/s), and the worker sends "
        "its records evenly spaced at the limit.",
    )


class DestinationConfig(BaseModel):
    """Settings every destination has, whatever its kind."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        description="Unique name; routes refer to it and its task queue is named after it.",
    )
    kind: str = Field(description="Destination kind, e.g. rest, file or postgres.")
    rate_limit: float | None = Field(
        default=None,
        gt=0,
        description="Records per second across all workers of this destination, enforced by "
        "the Temporal server on its task queue; unset means unlimited.",
    )
    batch_size: int = batch_size_field(500)
    max_concurrency: int = Field(
        default=16, ge=1, description="Exports one worker process runs at once."
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig, description="Retry policy (section destinations[].retry)."
    )
    timeouts: TimeoutConfig = Field(
        default_factory=TimeoutConfig, description="Time limits (section destinations[].timeouts)."
    )
    rate_control: RateControlConfig = Field(
        default_factory=RateControlConfig,
        description="Circuit breaker and adaptive rate (section destinations[].rate_control).",
    )
    tombstones: Literal["export", "skip"] = Field(
        default="export",
        description="Records with a null value (tombstones: how a compacted topic says a key "
        "was deleted). `export`: sent like any other record (a JSON envelope carries "
        '`"value": null` and no `value_encoding`; PostgreSQL value columns are NULL). `skip`: '
        "not sent; the record's export completes, saying it was skipped.",
    )
    ordering: Literal["none", "key"] = Field(
        default="none",
        description="`none`: records are exported concurrently, two records of one key in "
        "either order. `key`: the records of one key reach the destination one at a time, in "
        "offset order (one ExportKey workflow per key; different keys still run in "
        "parallel); a record that fails for good blocks its key until `courier replay` or "
        "`courier skip`. Records with a null key are not ordered. Per-record mode only.",
    )

    def create(self) -> Destination:
        """The destination this config describes (not yet opened); each kind overrides it."""
        raise NotImplementedError(f"destination kind {self.kind!r} does not implement create()")

    def deployment_needs(self) -> DeploymentNeeds:
        """What this destination's workers need where they run; by default nothing special."""
        return DeploymentNeeds()

    @classmethod
    def credential_fields(cls, entry: Mapping[str, Any]) -> list[tuple[str, ...]]:
        """Fields of this kind's entry in the config file (as written) that hold a credential.

        Paths inside the entry, e.g. ``("headers", "Authorization")``; they must come from the
        environment (``${NAME}``), never be written in the file. Fields typed ``SecretStr`` and
        passwords in URLs and DSNs are found without this; by default there are no others.
        """
        return []

    @classmethod
    def describe_preview(cls, shown: Mapping[str, Any]) -> list[str]:
        """Lines showing what this kind's ``preview()`` returned (``courier map``).

        By default one ``field: JSON`` line per item; a kind overrides it to show its request,
        line or row the way its users know them.
        """
        return [f"{name}: {json.dumps(value, ensure_ascii=False)}" for name, value in shown.items()]

    @property
    def records_per_batch_activity(self) -> int:
        """Batch mode: most records one export activity carries.

        ``batch_size``, but no more than one second of ``rate_limit``: the worker spaces an
        activity's records at its share of the rate, and a larger activity would keep records
        in the worker, not in the queue, for longer than one attempt allows.
        """
        if self.rate_limit is None:
            return self.batch_size
        return max(1, min(self.batch_size, int(self.rate_limit)))

    @property
    def task_queue(self) -> str:
        """The activity task queue of this destination."""
        return TASK_QUEUE_PREFIX + self.name

    def policy(self) -> DestinationPolicy:
        """The secret-free policy that travels in workflow inputs."""
        return DestinationPolicy(
            name=self.name,
            task_queue=self.task_queue,
            retry=RetrySpec(
                initial_interval_s=self.retry.initial_interval.total_seconds(),
                backoff_coefficient=self.retry.backoff_coefficient,
                maximum_interval_s=self.retry.maximum_interval.total_seconds(),
                maximum_attempts=self.retry.maximum_attempts,
            ),
            start_to_close_s=self.timeouts.attempt.total_seconds(),
            schedule_to_close_s=(
                self.timeouts.total.total_seconds() if self.timeouts.total else None
            ),
            batch_size=self.records_per_batch_activity,
            heartbeat_s=(
                self.timeouts.heartbeat.total_seconds() if self.timeouts.heartbeat else None
            ),
        )


@runtime_checkable
class Destination(Protocol):
    """A place records are exported to; see the module docstring for the lifecycle."""

    async def open(self) -> None:
        """Connect and prepare (tables, files); called once per worker process."""
        ...

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        """Write every record of the batch idempotently; return a short detail for the receipt.

        ``await pace(n)`` before sending ``n`` of the records: once per request for a kind
        that sends one request per record, once for the whole batch for a bulk write.
        """
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...
