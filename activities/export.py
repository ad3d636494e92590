"""The export activities, and the one place that maps export errors to retry decisions.

``export`` writes the records of one ``ExportRecord`` workflow (inline, or read back from Kafka
when handed off by reference). ``export_range`` writes part of an ``ExportRange``: it reads the
records from Kafka, gives each its own idempotency key (the same as in per-record mode), and
reports records that fail for good one by one (a failing batch is split until the bad records
are found) instead of failing the others.

A retried ``export_range`` sends only records without a confirmed effect: an attempt that fails
after some of its records were written (say 8 of 10 requests answered 200) records their
offsets in its last heartbeat, and the next attempt neither reads nor sends them again — so they
are never reported Failed because compaction or retention removed them meanwhile.

Compacted topics: a record is exported as Kafka holds it when the worker reads it. A record
compaction removed before it was read is not a failure: a later record of its key replaced it
and goes out in its turn; it is reported as superseded. Which of a key's superseded records go
out therefore depends on when they are read, as for any Kafka consumer; the latest record of
each key always does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.base import Destination, Pace
from activities.errors import ExportError, PermanentExportError, RetryableExportError
from activities.formats import RecordDecoder
from activities.pacing import Pacer
from activities.source import Fetched, RecordSource
from courier.core import metrics
from courier.core.durations import format_duration
from courier.core.ids import workflow_id
from courier.core.rates import format_rate
from courier.rate_control.outcomes import AttemptOutcomes
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
CONFIRMED_OFFSETS = "confirmed_offsets"
"""Heartbeat detail of ``export_range``: offsets whose effect an attempt confirmed."""


def no_progress() -> tuple[object, ...]:
    """Heartbeat details of an activity that keeps no progress."""
    return ()


@contextlib.asynccontextmanager
async def heartbeating(
    progress: Callable[[], tuple[object, ...]] = no_progress,
) -> AsyncIterator[None]:
    """Heartbeat the running activity in the background (if it has a heartbeat timeout).

    A worker that dies stops heartbeating, so Temporal retries its attempts elsewhere after
    the heartbeat timeout rather than the whole attempt timeout. Each heartbeat carries
    ``progress()``, so it never erases what an attempt recorded for the next one.
    """
    timeout = activity.info().heartbeat_timeout
    if not timeout:
        yield
        return
    interval = timeout.total_seconds() / HEARTBEATS_PER_TIMEOUT

    async def beat() -> None:
        while True:
            activity.heartbeat(*progress())
            await asyncio.sleep(interval)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def attempt_timed_out() -> bool:
    """Whether the running activity was cancelled because its attempt timed out.

    The worker learns of a start-to-close timeout as the server no longer knowing the task
    (``not_found``), so the attempt's age tells that apart from a workflow that ended.
    """
    details = activity.cancellation_details()
    if details is None:
        return False
    if details.timed_out:
        return True
    info = activity.info()
    timeout = info.start_to_close_timeout
    if not details.not_found or not timeout:
        return False
    return datetime.now(UTC) - info.started_time >= timeout * 0.9


def confirmed_before() -> set[int]:
    """Offsets an earlier attempt of the running ``export_range`` confirmed (its last heartbeat)."""
    details = activity.info().heartbeat_details
    if details and isinstance(details[0], dict):
        return {int(offset) for offset in details[0].get(CONFIRMED_OFFSETS, [])}
    return set()


class ExportActivity:
    """Runs one destination's writes; one instance per destination per worker process."""

    def __init__(
        self,
        name: str,
        destination: Destination,
        source: RecordSource | None = None,
        *,
        skip_tombstones: bool = False,
        decoder: RecordDecoder | None = None,
    ) -> None:
        self.name = name
        self.destination = destination
        self.source = source
        self.skip_tombstones = skip_tombstones
        self.decoder = decoder
        """Reads keys and values by their topic's format before they are written (None: as
        they are)."""
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
                records, superseded = await self._read_back(records, with_keys=batch.with_keys)
                if superseded:
                    self.outcomes.not_reached += 1
                    return ExportResult(
                        destination=self.name,
                        written=0,
                        detail=f"not exported: {superseded}",
                        attempt=activity.info().attempt,
                    )
            if self.skip_tombstones and all(r.record.value is None for r in records):
                return ExportResult(
                    destination=self.name,
                    written=0,
                    detail="skipped: a tombstone (null value; tombstones: skip)",
                    attempt=activity.info().attempt,
                )
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
        confirmed = confirmed_before() & set(batch.offsets)

        def progress() -> tuple[object, ...]:
            return ({CONFIRMED_OFFSETS: sorted(confirmed)},) if confirmed else ()

        async with (
            heartbeating(progress),
            self._unexpected_errors_retried(where, len(batch.offsets)),
        ):
            return await self._export_range(batch, self._attempt_pace(), confirmed, progress)

    def _attempt_pace(self) -> Pace:
        """This attempt's pace: the worker's, until ``PACE_BUDGET`` of the attempt's time is
        spent waiting; then the rest goes unpaced, said at most every ``UNPACED_LOG_S``."""
        timeout = activity.info().start_to_close_timeout
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout.total_seconds() * PACE_BUDGET if timeout else None

        async def pace(count: int) -> None:
            if await self.pacer.wait(count, until=until) or timeout is None:
                return
            rate, source = self.pacer.rate, self.pacer.source
            now = loop.time()
            if rate is None or now - self._unpaced_logged < UNPACED_LOG_S:
                return
            self._unpaced_logged = now
            if source.startswith("rate control"):
                level, advice = logging.INFO, "nothing to do: the batch was cut at a higher rate"
            elif source.startswith("an operator's limit"):
                level, advice = (
                    logging.WARNING,
                    "the batch was cut at a higher rate: set rate_limit in the config, so a "
                    "batch carries one second of it, or raise timeouts.attempt",
                )
            else:
                level, advice = logging.WARNING, "raise timeouts.attempt or lower batch_size"
            log.log(
                level,
                "%s: the rest of an export goes out unpaced: pacing it at %s, %s, would outlast "
                "half its attempt timeout (%s); %s",
                self.name,
                format_rate(rate),
                source,
                format_duration(timeout),
                advice,
            )

        return pace

    async def _export_range(
        self,
        batch: RangeBatch,
        pace: Pace,
        confirmed: set[int],
        progress: Callable[[], tuple[object, ...]],
    ) -> RangeBatchResult:
        """Export the records of ``batch`` not in ``confirmed``, adding those that succeed."""
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
        absent = [o for o in todo if o not in fetched.records]
        superseded = [o for o in absent if fetched.compacted(o)]
        failed = [
            FailedRecord(o, self.name, fetched.missing) for o in absent if not fetched.compacted(o)
        ]
        if superseded:
            log.info(
                "%s: %d records of %s/%d [%d..%d] were compacted away before they were read; "
                "later records of their keys replaced them (not exported)",
                self.name,
                len(superseded),
                batch.topic,
                batch.partition,
                superseded[0],
                superseded[-1],
            )
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
        tombstones = [i for i in items if i.record.value is None] if self.skip_tombstones else []
        if tombstones:
            items = [i for i in items if i.record.value is not None]
        if absent and not items:
            self.outcomes.not_reached += 1  # nothing of it went to the destination
        confirmed_before_now = len(confirmed)
        keys: set[str] = set()
        try:
            parts = await self._write_isolating_failures(items, pace, keys)
        except BaseException:
            # Retried: the next attempt skips what this one confirmed.
            confirmed.update(i.record.offset for i in items if i.idempotency_key in keys)
            if confirmed:
                activity.heartbeat(*progress())
            raise
        written = confirmed_before_now
        for part, reason in parts:
            if reason is None:
                written += len(part)
            else:
                failed.extend(FailedRecord(i.record.offset, self.name, reason) for i in part)
        skipped = f", {len(superseded)} superseded (compacted away)" if superseded else ""
        if tombstones:
            skipped += f", {len(tombstones)} tombstones skipped"
        return RangeBatchResult(
            destination=self.name,
            written=written,
            failed=failed,
            detail=f"{written} written, {len(failed)} failed{skipped}",
            attempt=activity.info().attempt,
        )

    @contextlib.asynccontextmanager
    async def _unexpected_errors_retried(self, where: str, count: int) -> AsyncIterator[None]:
        """Log, count and retry errors no destination or source classified (bugs, mostly).

        The first of each error type is logged with its traceback, the others in one line. An
        attempt Temporal ends for its timeout is logged (repeats are summarised) and counted
        as the destination not answering.
        """
        try:
            yield
        except ApplicationError:
            raise
        except asyncio.CancelledError:
            if attempt_timed_out():
                self._timed_out(where, count)
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

    def _timed_out(self, where: str, count: int) -> None:
        info = activity.info()
        timeout = info.start_to_close_timeout
        reason = (
            f"{where}: no answer within the attempt timeout"
            f"{f' ({format_duration(timeout)}, timeouts.attempt)' if timeout else ''}"
        )
        metrics.record_failure(self.name, kind="retryable", count=count)
        self.outcomes.unavailable += 1
        self.outcomes.last_error = reason
        log.warning(
            "%s: attempt %d timed out, will retry: %s",
            self.name,
            info.attempt,
            reason,
            extra={"destination": self.name, "record": where},
        )

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
    ) -> tuple[list[OutgoingRecord], str | None]:
        """The records of a by-reference ``ExportRecord``, read from Kafka and checked (their
        topic's ID, and ``with_keys`` their keys), or why none is exported: compaction replaced
        it with a later record of its key."""
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
            if record is None and fetched.compacted(ref.offset):
                return [], (
                    f"{ref.topic}/{ref.partition}/{ref.offset} was compacted away before it was "
                    "read (a later record of its key replaced it)"
                )
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
        return result, None

    def _permanent(self, reason: str) -> ApplicationError:
        """A record's failure before it reached the destination (read back from Kafka)."""
        metrics.record_failure(self.name, kind="permanent", count=1)
        self.outcomes.not_reached += 1
        log.warning("%s: permanent failure: %s", self.name, reason)
        return ApplicationError(reason, type=PERMANENT_ERROR_TYPE, non_retryable=True)

    async def _write(
        self, records: Sequence[OutgoingRecord], pace: Pace, confirmed: set[str] | None = None
    ) -> str:
        """Write records; map export errors to Temporal's retry decisions.

        ``confirmed`` gains the idempotency keys of the records whose effect is confirmed,
        also when the write as a whole fails.
        """
        attempt = activity.info().attempt
        started = time.perf_counter()
        try:
            if self.decoder is not None:
                records = await self.decoder.decode_all(records)
            detail = await self.destination.write(records, pace=pace)
        except ExportError as err:
            if confirmed is not None:
                confirmed.update(err.confirmed)
            self._raise_for(err, records, attempt)
        if confirmed is not None:
            confirmed.update(r.idempotency_key for r in records)
        metrics.record_success(self.name, count=len(records), seconds=time.perf_counter() - started)
        self.outcomes.answered += 1
        return detail

    def _raise_for(
        self, err: ExportError, records: Sequence[OutgoingRecord], attempt: int
    ) -> NoReturn:
        """Raise the Temporal error for a destination's export error (counted and logged)."""
        if isinstance(err, PermanentExportError):
            metrics.record_failure(self.name, kind="permanent", count=len(records))
            if err.reached:
                self.outcomes.answered += 1  # refused for good, but up
            else:
                self.outcomes.not_reached += 1
            log.warning("%s: permanent failure: %s", self.name, err.reason)
            # No cause chain: the reason says it all, and the chain's stack traces could take
            # the failure past the server's size limit for a pending activity's last failure,
            # which then shows "Failure exceeds size limit." instead (seen with httpx's chain).
            raise ApplicationError(
                err.reason, type=PERMANENT_ERROR_TYPE, non_retryable=True
            ) from None
        if isinstance(err, RetryableExportError):
            metrics.record_failure(self.name, kind="retryable", count=len(records))
            if err.cause == "throttled":
                self.outcomes.throttled += 1
            elif err.cause == "unavailable":
                self.outcomes.unavailable += 1
                self.outcomes.last_error = err.reason
            log.info("%s: attempt %d failed, will retry: %s", self.name, attempt, err.reason)
            delay = timedelta(seconds=err.retry_after) if err.retry_after is not None else None
            raise ApplicationError(
                err.reason, type=RETRYABLE_ERROR_TYPE, next_retry_delay=delay
            ) from None
        raise err

    async def _write_isolating_failures(
        self, items: list[OutgoingRecord], pace: Pace, confirmed: set[str]
    ) -> list[tuple[list[OutgoingRecord], str | None]]:
        """Write ``items``; on a permanent failure split them until the bad records are alone.

        Returns ``(records, None)`` for written parts and ``(records, reason)`` for records that
        failed for good; records a failed write confirmed are not written again. Retryable
        failures raise (the keys written so far are in ``confirmed``): the batch is retried.
        """
        if not items:
            return []
        try:
            await self._write(items, pace, confirmed)
            return [(items, None)]
        except ApplicationError as err:
            if err.type != PERMANENT_ERROR_TYPE:
                raise
            written = [i for i in items if i.idempotency_key in confirmed]
            rest = [i for i in items if i.idempotency_key not in confirmed]
            done: list[tuple[list[OutgoingRecord], str | None]] = (
                [(written, None)] if written else []
            )
            if len(rest) <= 1:
                return [*done, (rest, err.message)] if rest else done
        middle = len(rest) // 2
        return [
            *done,
            *await self._write_isolating_failures(rest[:middle], pace, confirmed),
            *await self._write_isolating_failures(rest[middle:], pace, confirmed),
        ]
