"""The ``ExportKey`` workflow: the records of one key, exported to one destination in order.

Per-key ordering (a destination with ``ordering: key``). One long-lived workflow per
(consumer group, destination, key), ID from ``courier.core.ids.key_workflow_id``:

1. Ingest hands each record over with signal-with-start (signal ``record``); the hand-off is
   durable once the signal is accepted. Ingest signals the records of a key one after the
   other, in offset order, so a record at or below the last offset queued from its partition
   is a repeat (ingest read it again after a crash or rebalance) and is dropped.
2. The workflow exports its queue one record at a time, each with the ``export`` activity on
   the destination's task queue (its rate limit, retry policy and timeouts), and under the
   record's own idempotency key, the same as in unordered mode.
3. A record that fails for good (a permanent error, or its attempts are used up) blocks the
   key: the workflow keeps queueing the key's records, sets ``CourierFailedCount`` to 1 and
   ``CourierTopic``/``CourierPartition``/``CourierOffset`` to the blocked record, and waits
   for the update ``retry`` (``courier replay``) or ``skip`` (``courier skip``). Other keys
   run on.
4. It continues as new every :data:`EVENTS_PER_RUN` records and signals (or when Temporal
   suggests it; an export in flight is given up at twice that, and done again in the next
   run), carrying its queue (the first :data:`INLINE_CARRY_BYTES` of record data
   inline, the rest by reference; at most :data:`MAX_CARRIED` records), and completes once
   the key has been idle for :data:`IDLE_S` with nothing queued.

Deterministic; imports nothing with side effects.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from courier.core import search_attributes as sa
    from workflows.export_record import (
        EXPORT_ACTIVITY,
        failure_reason,
        heartbeat_timeout,
        retry_policy,
        total_timeout,
    )
    from workflows.types import (
        BlockedRecord,
        ExportBatch,
        ExportKeyInput,
        ExportKeyResult,
        ExportResult,
        KeyState,
        OrderedRecord,
        OutgoingRecord,
    )

RECORD_SIGNAL = "record"
SKIP_UPDATE = "skip"
RETRY_UPDATE = "retry"
STATE_QUERY = "state"
IDLE_S = 60.0
"""A key with nothing queued for this long ends its workflow; its next record starts a new one."""
EVENTS_PER_RUN = 200
"""Records exported plus signals received before the workflow continues as new."""
INLINE_CARRY_BYTES = 256 * 1024
"""Queued records a run carries to the next with their data, at most; the others go by
reference (coordinates and key: the worker reads them back from Kafka)."""
MAX_CARRIED = 2_500
"""Most queued records a run carries over: ~630 bytes each by reference, well inside
Temporal's 2 MB input limit. A longer queue keeps its run going until it is shorter."""


def source_of(item: OrderedRecord) -> str:
    """``<topic ID>/<partition>``: the sequence a record's offset belongs to."""
    record = item.export.record
    return f"{record.topic_id or record.topic}/{record.partition}"


def carried(queue: list[OrderedRecord]) -> list[OrderedRecord]:
    """The queue as the next run gets it: data of the first ``INLINE_CARRY_BYTES``, then refs."""
    result, budget = [], INLINE_CARRY_BYTES
    for item in queue:
        export, record = item.export, item.export.record
        size = len(record.value.text) if record.value else 0
        size += sum(len(h.name) + (len(h.value.text) if h.value else 0) for h in record.headers)
        budget -= size
        if budget < 0 and not export.by_reference and record.topic_id is not None:
            reference = replace(record, value=None, headers=[])
            item = replace(item, export=replace(export, record=reference, by_reference=True))
        result.append(item)
    return result


@workflow.defn(name="ExportKey")
class ExportKey:
    """Exports the records of one key to one destination, one at a time, in offset order."""

    def __init__(self) -> None:
        self._destination = ""
        self._key = ""
        self._queue: deque[OrderedRecord] = deque()
        self._last: dict[str, int] = {}
        self._blocked: BlockedRecord | None = None
        self._decision: str | None = None
        self._exported = 0
        self._skipped = 0
        self._repeats = 0
        self._events = 0

    @workflow.run
    async def run(self, input: ExportKeyInput) -> ExportKeyResult:
        """Export the queue in order; block on a failed record; end when idle."""
        self._destination, self._key = input.destination, input.key
        # Records signalled before this first task ran follow the carried queue, and are
        # checked for repeats against what the earlier runs took.
        early, self._queue = list(self._queue), deque(input.pending)
        self._last, self._repeats = dict(input.last_offsets), 0
        for item in early:
            self._take(item)
        self._blocked = input.blocked
        self._exported += input.exported
        self._skipped += input.skipped
        while True:
            if self._blocked is not None:
                await self._wait_for_decision()
                continue
            if not self._queue:
                try:
                    await workflow.wait_condition(
                        lambda: bool(self._queue), timeout=timedelta(seconds=IDLE_S)
                    )
                except TimeoutError:
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    if not self._queue:
                        return ExportKeyResult(exported=self._exported, skipped=self._skipped)
                continue
            if self._run_is_long():
                await self._continue_as_new()
            item = self._queue[0]
            self._events += 1
            reason = await self._export(item)
            if reason is None:
                self._queue.popleft()
                self._exported += 1
            else:
                self._block(item, reason)

    async def _export(self, item: OrderedRecord) -> str | None:
        """Export one record; None when done, else why it failed for good."""
        export = item.export
        if export.hand_off_failure is not None:
            return export.hand_off_failure
        policy = export.destination
        if policy is None:
            return export.unroutable_reason or "the record's key has no route"
        attempt = workflow.start_activity(
            EXPORT_ACTIVITY,
            ExportBatch(
                destination=policy.name,
                records=[OutgoingRecord(item.idempotency_key, export.record)],
                by_reference=export.by_reference,
            ),
            task_queue=policy.task_queue,
            start_to_close_timeout=timedelta(seconds=policy.start_to_close_s),
            schedule_to_close_timeout=total_timeout(policy),
            heartbeat_timeout=heartbeat_timeout(policy),
            retry_policy=retry_policy(policy),
            result_type=ExportResult,
            # A cancelled export is over before the next run exports the record again.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        # An export that retries for long (a destination down) while the key's records keep
        # arriving must not grow this run's history without bound: give it up and export the
        # record again, under the same idempotency key, in a new run.
        await workflow.wait_condition(lambda: attempt.done() or self._run_is_too_long())
        if not attempt.done():
            attempt.cancel()
        try:
            await attempt
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                await self._continue_as_new()
            return failure_reason(err)
        return None

    def _block(self, item: OrderedRecord, reason: str) -> None:
        record = item.export.record
        self._blocked = BlockedRecord(
            idempotency_key=item.idempotency_key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
            since=workflow.now().timestamp(),
        )
        workflow.logger.warning(
            "key %r of %s blocked at %s/%d/%d: %s",
            self._key,
            self._destination,
            record.topic,
            record.partition,
            record.offset,
            reason,
        )
        workflow.upsert_search_attributes(
            [
                sa.FAILED_COUNT.value_set(1),
                sa.TOPIC.value_set(record.topic),
                sa.PARTITION.value_set(record.partition),
                sa.OFFSET.value_set(record.offset),
            ]
        )

    async def _wait_for_decision(self) -> None:
        """Wait (continuing as new if the wait grows long) for ``retry`` or ``skip``."""
        await workflow.wait_condition(lambda: self._decision is not None or self._run_is_long())
        if self._decision is None:
            await self._continue_as_new()
        decision, self._decision = self._decision, None
        if decision == SKIP_UPDATE and self._queue:
            self._queue.popleft()
            self._skipped += 1
        self._blocked = None
        workflow.upsert_search_attributes([sa.FAILED_COUNT.value_set(0)])

    def _run_is_too_long(self) -> bool:
        """Long enough to give up an export in flight (twice the usual length)."""
        if len(self._queue) > MAX_CARRIED:
            return False
        return self._events >= 2 * EVENTS_PER_RUN or workflow.info().is_continue_as_new_suggested()

    def _run_is_long(self) -> bool:
        if len(self._queue) > MAX_CARRIED:
            return False  # too long to carry over: the run goes on until the queue shrinks
        return self._events >= EVENTS_PER_RUN or workflow.info().is_continue_as_new_suggested()

    async def _continue_as_new(self) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            ExportKeyInput(
                destination=self._destination,
                key=self._key,
                pending=carried(list(self._queue)),
                last_offsets=dict(self._last),
                blocked=self._blocked,
                exported=self._exported,
                skipped=self._skipped,
            )
        )

    @workflow.signal(name=RECORD_SIGNAL)
    def record(self, item: OrderedRecord) -> None:
        """Queue the key's next record; a record at or below the last one queued is a repeat."""
        self._events += 1
        self._take(item)

    def _take(self, item: OrderedRecord) -> None:
        source = source_of(item)
        if item.export.record.offset <= self._last.get(source, -1):
            self._repeats += 1
            return
        self._last[source] = item.export.record.offset
        self._queue.append(item)

    @workflow.update(name=RETRY_UPDATE)
    def retry(self) -> str:
        """Export the blocked record again (after its cause was fixed)."""
        assert self._blocked is not None  # the validator made sure
        self._decision = RETRY_UPDATE
        return self._blocked.idempotency_key

    @retry.validator
    def _check_retry(self) -> None:
        if self._blocked is None or self._decision is not None:
            raise ValueError(f"key {self._key!r} of {self._destination} is not blocked")

    @workflow.update(name=SKIP_UPDATE)
    def skip(self, record_id: str) -> str:
        """Give up on the blocked record (``record_id``, or any if empty); go on with the next."""
        assert self._blocked is not None  # the validator made sure
        self._decision = SKIP_UPDATE
        return self._blocked.idempotency_key

    @skip.validator
    def _check_skip(self, record_id: str) -> None:
        blocked = self._blocked
        if blocked is None or self._decision is not None:
            raise ValueError(f"key {self._key!r} of {self._destination} is not blocked")
        if record_id and record_id != blocked.idempotency_key:
            raise ValueError(
                f"key {self._key!r} of {self._destination} is blocked at "
                f"{blocked.idempotency_key}, not at {record_id}"
            )

    @workflow.query(name=STATE_QUERY)
    def state(self) -> KeyState:
        """The key's queue, counts and the record it is blocked on, if any."""
        return KeyState(
            destination=self._destination,
            key=self._key,
            pending=len(self._queue),
            exported=self._exported,
            skipped=self._skipped,
            repeats=self._repeats,
            blocked=self._blocked,
        )
