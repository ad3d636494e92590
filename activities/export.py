"""The export activities, and the one place that maps export errors to retry decisions.

``export`` writes the records of one ``ExportRecord`` workflow (inline, or read back from Kafka
when handed off by reference). ``export_range`` writes part of an ``ExportRange``: it reads the
records from Kafka, gives each its own idempotency key (the same as in per-record mode), and
reports records that fail for good one by one (a failing batch is split until the bad records
are found) instead of failing the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.base import Destination, Pace
from activities.errors import ExportError, PermanentExportError, RetryableExportError
from activities.pacing import Pacer
from activities.source import Fetched, RecordSource
from courier import metrics
from courier.durations import format_duration
from courier.ids import workflow_id
from courier.rates import format_rate
from workflows.export_range import EXPORT_RANGE_ACTIVITY
from workflows.export_record import EXPORT_ACTIVITY, PERMANENT_ERROR_TYPE
from workflows.types import (
    ExportBatch,
    ExportResult,
    FailedRecord,
    OutgoingRecord,
    RangeBatch,
    RangeBatchResult,
)

log = logging.getLogger(__name__)

RETRYABLE_ERROR_TYPE = "RetryableExportError"
UNEXPECTED_ERROR_TYPE = "UnexpectedExportError"
HEARTBEATS_PER_TIMEOUT = 4
"""Heartbeats sent per heartbeat timeout, so a slow event loop does not lose an attempt."""
PACE_BUDGET = 0.5
"""Share of an attempt's timeout its records may spend waiting for their pace: a rate lowered
after a batch was cut (``courier limit``, the adaptive rate) must not time out every attempt."""
UNPACED_LOG_S = 300.0
"""Least time between two warnings that an export's records went out unpaced."""


@contextlib.asynccontextmanager
async def heartbeating(details: Callable[[], Sequence[Any]] = tuple) -> AsyncIterator[None]:
    """Heartbeat the running activity in the background (if it has a heartbeat timeout), with
    ``details()`` as the heartbeat's details.

    A worker that dies stops heartbeating, so Temporal retries its attempts elsewhere after
    the heartbeat timeout rather than the whole attempt timeout.
    """
    timeout = activity.info().heartbeat_timeout
    if not timeout:
        yield
        return
    interval = timeout.total_seconds() / HEARTBEATS_PER_TIMEOUT

    async def beat() -> None:
        while True:
            activity.heartbeat(*details())
            await asyncio.sleep(interval)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class AttemptOutcomes:
    """Counts of export attempts since the worker last reported them to rate control."""

    answered: int = 0
    """Written, or refused for good: either way the destination is up."""
    unavailable: int = 0
    throttled: int = 0
    last_error: str = ""
    started: float = field(default_factory=time.monotonic)

    def take(self) -> AttemptOutcomes:
        """The counts so far; starts a new window."""
        window = replace(self)
        self.answered = self.unavailable = self.throttled = 0
        self.last_error = ""
        self.started = time.monotonic()
        return window

    def __bool__(self) -> bool:
        return bool(self.answered or self.unavailable or self.throttled)


class ExportActivity:
    """Runs one destination's writes; one instance per destination per worker process."""

    def __init__(
        self, name: str, destination: Destination, source: RecordSource | None = None
    ) -> None:
        self.name = name
        self.destination = destination
        self.source = source
        self.outcomes = AttemptOutcomes()
        self.pacer = Pacer()
        self._unpaced_logged = -UNPACED_LOG_S
        self._unexpected_seen: set[str] = set()

    @activity.defn(name=EXPORT_ACTIVITY)
    async def export(self, batch: ExportBatch) -> ExportResult:
        """Write a batch to this worker's destination, idempotently."""
        self._check_destination(batch.destination)
        first = batch.records[0].record if batch.records else None
        where = f"{first.topic}/{first.partition}/{first.offset}" if first else "an empty batch"
        async with heartbeating(), self._unexpected_errors_retried(where, len(batch.records)):
            pace = self._attempt_pace()
            records = batch.records
            if batch.by_reference:
                records = await self._read_back(records, with_keys=batch.with_keys)
            detail = await self._write(records, pace)
        return ExportResult(
            destination=self.name,
            written=len(records),
            detail=detail,
            attempt=activity.info().attempt,
        )

    @activity.defn(name=EXPORT_RANGE_ACTIVITY)
    async def export_range(self, batch: RangeBatch) -> RangeBatchResult:
        """Read part of a range from Kafka and write it; report records that fail for good."""
        self._check_destination(batch.destination)
        span = f"[{batch.offsets[0]}..{batch.offsets[-1]}]" if batch.offsets else "[]"
        where = f"{batch.topic}/{batch.partition}/{span}"
        # Offsets whose effect is confirmed, kept in the heartbeat's details: a retried
        # attempt sends only the others.
        confirmed = confirmed_before()
        async with (
            heartbeating(lambda: [sorted(confirmed)]),
            self._unexpected_errors_retried(where, len(batch.offsets)),
        ):
            try:
                return await self._export_range(batch, self._attempt_pace(), confirmed)
            except BaseException:
                activity.heartbeat(sorted(confirmed))  # the next attempt's starting point
                raise

    def _attempt_pace(self) -> Pace:
        """This attempt's pace: the worker's, until ``PACE_BUDGET`` of the attempt's time is
        spent waiting; then the rest goes unpaced, said at most every ``UNPACED_LOG_S``."""
        timeout = activity.info().start_to_close_timeout
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout.total_seconds() * PACE_BUDGET if timeout else None

        async def pace(count: int) -> None:
            if await self.pacer.wait(count, until=until) or timeout is None:
                return
            now = loop.time()
            if now - self._unpaced_logged >= UNPACED_LOG_S:
                self._unpaced_logged = now
                log.warning(
                    "%s: the rest of an export goes out faster than %s: pacing it would outlast "
                    "half its attempt timeout (%s); the rate was lowered after the batch was cut "
                    "(courier limit, adaptive rate): set rate_limit in the config, so an export "
                    "carries one second of it, or raise timeouts.attempt",
                    self.name,
                    format_rate(self.pacer.rate),
                    format_duration(timeout),
                )

        return pace

    async def _export_range(
        self, batch: RangeBatch, pace: Pace, confirmed: set[int]
    ) -> RangeBatchResult:
        """Write the range's records not in ``confirmed``; add those written to it."""
        todo = [o for o in batch.offsets if o not in confirmed]
        fetched = (
            await self._source().fetch(
                topic=batch.topic,
                topic_id=batch.topic_id,
                partition=batch.partition,
                offsets=todo,
            )
            if todo
            else Fetched({}, "")
        )
        failed = [
            FailedRecord(o, self.name, fetched.missing) for o in todo if o not in fetched.records
        ]
        items = [
            OutgoingRecord(
                idempotency_key=workflow_id(
                    group=batch.group,
                    topic=batch.topic,
                    topic_id=batch.topic_id,
                    partition=batch.partition,
                    offset=o,
                ),
                record=fetched.records[o],
            )
            for o in todo
            if o in fetched.records
        ]
        written = len(batch.offsets) - len(todo)
        keys: set[str] = set()
        try:
            parts = await self._write_isolating_failures(items, pace, keys)
        finally:
            confirmed.update(i.record.offset for i in items if i.idempotency_key in keys)
        for part, reason in parts:
            if reason is None:
                written += len(part)
            else:
                failed.extend(FailedRecord(i.record.offset, self.name, reason) for i in part)
        return RangeBatchResult(
            destination=self.name,
            written=written,
            failed=failed,
            detail=f"{written} written, {len(failed)} failed",
            attempt=activity.info().attempt,
        )

    @contextlib.asynccontextmanager
    async def _unexpected_errors_retried(self, where: str, count: int) -> AsyncIterator[None]:
        """Log, count and retry errors no destination or source classified (bugs, mostly).

        The first of each error type is logged with its traceback, the others in one line.
        """
        try:
            yield
        except ApplicationError:
            raise
        except Exception as err:
            metrics.record_failure(self.name, kind="unexpected", count=count)
            kind = type(err).__name__
            first = kind not in self._unexpected_seen
            self._unexpected_seen.add(kind)
            log.error(
                "%s: unexpected %s exporting %s (will retry; please report it): %s",
                self.name,
                kind,
                where,
                err,
                exc_info=first,
                extra={"destination": self.name, "record": where},
            )
            raise ApplicationError(f"unexpected {kind}: {err}", type=UNEXPECTED_ERROR_TYPE) from err

    def _check_destination(self, destination: str) -> None:
        if destination != self.name:
            raise ApplicationError(
                f"batch for {destination!r} reached the worker of {self.name!r}",
                type=PERMANENT_ERROR_TYPE,
                non_retryable=True,
            )

    def _source(self) -> RecordSource:
        if self.source is None:
            raise ApplicationError(
                f"the worker of {self.name!r} has no Kafka source for records by reference",
                type=RETRYABLE_ERROR_TYPE,
            )
        return self.source

    async def _read_back(
        self, records: Sequence[OutgoingRecord], *, with_keys: bool = True
    ) -> list[OutgoingRecord]:
        """The records of a by-reference ``ExportRecord``, read from Kafka and checked (their
        topic's ID, and ``with_keys`` their keys)."""
        result = []
        for item in records:
            ref = item.record
            if ref.topic_id is None:
                raise self._permanent(f"{ref.topic}/{ref.partition}/{ref.offset} has no topic ID")
            fetched = await self._source().fetch(
                topic=ref.topic,
                topic_id=ref.topic_id,
                partition=ref.partition,
                offsets=[ref.offset],
            )
            record = fetched.records.get(ref.offset)
            if record is None:
                raise self._permanent(
                    f"{ref.topic}/{ref.partition}/{ref.offset}: {fetched.missing}"
                )
            if with_keys and record.key != ref.key:
                raise self._permanent(
                    f"{ref.topic}/{ref.partition}/{ref.offset} now has another key than at "
                    "hand-off: the topic changed under Courier"
                )
            result.append(replace(item, record=record))
        return result

    def _permanent(self, reason: str) -> ApplicationError:
        metrics.record_failure(self.name, kind="permanent", count=1)
        log.warning("%s: permanent failure: %s", self.name, reason)
        return ApplicationError(reason, type=PERMANENT_ERROR_TYPE, non_retryable=True)

    async def _write(self, records: Sequence[OutgoingRecord], pace: Pace) -> str:
        """Write records; map export errors to Temporal's retry decisions."""
        attempt = activity.info().attempt
        started = time.perf_counter()
        try:
            detail = await self.destination.write(records, pace=pace)
        except PermanentExportError as err:
            self._count_written(records, err, started)
            metrics.record_failure(self.name, kind="permanent", count=_unwritten(records, err))
            self.outcomes.answered += 1  # refused for good, but up
            log.warning("%s: permanent failure: %s", self.name, err.reason)
            raise ApplicationError(
                err.reason, type=PERMANENT_ERROR_TYPE, non_retryable=True
            ) from err
        except RetryableExportError as err:
            self._count_written(records, err, started)
            metrics.record_failure(self.name, kind="retryable", count=_unwritten(records, err))
            if err.cause == "throttled":
                self.outcomes.throttled += 1
            elif err.cause == "unavailable":
                self.outcomes.unavailable += 1
                self.outcomes.last_error = err.reason
            log.info("%s: attempt %d failed, will retry: %s", self.name, attempt, err.reason)
            delay = timedelta(seconds=err.retry_after) if err.retry_after is not None else None
            raise ApplicationError(
                err.reason, type=RETRYABLE_ERROR_TYPE, next_retry_delay=delay
            ) from err
        metrics.record_success(self.name, count=len(records), seconds=time.perf_counter() - started)
        self.outcomes.answered += 1
        return detail

    def _count_written(
        self, records: Sequence[OutgoingRecord], err: ExportError, started: float
    ) -> None:
        """Count the records a partly failed batch wrote, as the destination said."""
        written = len(records) - _unwritten(records, err)
        if written:
            metrics.record_success(self.name, count=written, seconds=time.perf_counter() - started)

    async def _write_isolating_failures(
        self, items: list[OutgoingRecord], pace: Pace, written: set[str]
    ) -> list[tuple[list[OutgoingRecord], str | None]]:
        """Write ``items``; on a permanent failure find the bad records, sending none twice.

        A destination that says which records it wrote and which it refused (see
        ``PermanentExportError``) has only the others sent again; one that cannot say has the
        batch split until the bad records are alone. Returns ``(records, None)`` for written
        parts and ``(records, reason)`` for records that failed for good. Retryable failures
        raise: the batch is retried (idempotently). ``written`` gets the idempotency key of every
        record whose effect is confirmed, also when a retryable failure is raised.
        """
        if not items:
            return []
        try:
            await self._write(items, pace)
            written.update(i.idempotency_key for i in items)
            return [(items, None)]
        except ApplicationError as err:
            told = err.__cause__
            if isinstance(told, ExportError):
                written.update(
                    i.idempotency_key for i in items if i.idempotency_key in told.written
                )
            if err.type != PERMANENT_ERROR_TYPE:
                raise
            if len(items) == 1:
                return [(items, err.message)]
            known = (
                told.written | told.refused.keys()
                if isinstance(told, PermanentExportError)
                else set()
            )
            rest = [i for i in items if i.idempotency_key not in known]
            if isinstance(told, PermanentExportError) and len(rest) < len(items):
                done = [i for i in items if i.idempotency_key in told.written]
                refused = [i for i in items if i.idempotency_key in told.refused]
                return [
                    *([(done, None)] if done else []),
                    *(([i], told.refused[i.idempotency_key]) for i in refused),
                    *await self._write_isolating_failures(rest, pace, written),
                ]
        middle = len(items) // 2
        return [
            *await self._write_isolating_failures(items[:middle], pace, written),
            *await self._write_isolating_failures(items[middle:], pace, written),
        ]


def _unwritten(records: Sequence[OutgoingRecord], err: ExportError) -> int:
    """Records of a failed batch the destination did not say it wrote."""
    return sum(1 for r in records if r.idempotency_key not in err.written)


def confirmed_before() -> set[int]:
    """Offsets an earlier attempt of this range activity wrote (its last heartbeat's details)."""
    details = activity.info().heartbeat_details
    if details and isinstance(details[0], list):
        return {int(offset) for offset in details[0]}
    return set()
