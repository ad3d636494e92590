"""The ``ExportRange`` workflow (batch mode): export a contiguous offset range of a partition.

The range's records go by reference; the workflow fans out to one ``export_range`` activity per
destination and ``batch_size`` records, each on that destination's own task queue with its own
retry policy, all at once — a slow or failing destination's part never delays another's.

Ranges for success, the record for failure: a record that fails for good (and one that had no
route at ingest) gets its own ``ExportRecord`` workflow, a child left running on its own
(``ABANDON``) under the ID per-record mode gives the record, carrying its coordinates only. Its
first run fails at once with the reason, exactly as a per-record failure shows, so ``courier
failures``, ``show`` and ``replay`` treat it alike; a replay re-exports that record alone. The
range then completes, counting what it exported and what failed (``CourierFailedCount``). A run
starts at most ``RECORD_WORKFLOWS_PER_RUN`` of them and continues as new for the rest.

Ranges started before this behaviour fail listing their failed records, as they did
(``RECORD_WORKFLOWS_PATCH``). Deterministic, and it imports nothing with side effects.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    RetryState,
    WorkflowAlreadyStartedError,
)
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from courier.core import search_attributes as sa
    from courier.core.ids import parse_workflow_id, redrive_group, workflow_id
    from workflows.export_record import (
        PERMANENT_ERROR_TYPE,
        UNROUTABLE_ERROR_TYPE,
        ExportRecord,
        failure_reason,
        failure_type,
        heartbeat_timeout,
        retry_policy,
        total_timeout,
    )
    from workflows.types import (
        DestinationPolicy,
        ExportRangeInput,
        ExportRangeResult,
        ExportRecordInput,
        FailedRecord,
        KafkaRecord,
        RangeBatch,
        RangeBatchResult,
        RangeContinued,
        RangeFailure,
    )

EXPORT_RANGE_ACTIVITY = "export_range"
RANGE_FAILED_ERROR_TYPE = "RangeExportFailed"
RECORD_WORKFLOWS_PATCH = "failed-records-get-own-workflows"
"""Ranges that reach their end past this marker give failed records their own workflows."""
RECORD_WORKFLOWS_PER_RUN = 500
"""Most failed records' workflows one run starts (each is a few history events)."""
_SHOWN_FAILURES = 5


def chunks(offsets: list[int], size: int) -> list[list[int]]:
    """``offsets`` cut into lists of at most ``size``."""
    return [offsets[i : i + size] for i in range(0, len(offsets), size)]


@workflow.defn(name="ExportRange")
class ExportRange:
    """Exports one offset range of one partition to the destinations of its records."""

    @workflow.run
    async def run(self, input: ExportRangeInput) -> ExportRangeResult:
        """Run every destination's batches at once; give each failed record its own workflow."""
        if input.continued is not None:
            return await self._start_record_workflows(
                input, input.continued.exported, input.continued.to_start
            )
        parts = [
            self._export(input, piece.destination, offsets)
            for piece in input.slices
            for offsets in chunks(piece.offsets, max(1, piece.destination.batch_size))
        ]
        results = await asyncio.gather(*parts)
        failed = [*input.failed, *(f for result in results for f in result.failed)]
        exported = sum(result.written for result in results)
        if not failed:
            return ExportRangeResult(exported=exported, failed=[])
        workflow.upsert_search_attributes([sa.FAILED_COUNT.value_set(len(failed))])
        if workflow.patched(RECORD_WORKFLOWS_PATCH):
            return await self._start_record_workflows(input, exported, failed)
        total = exported + len(failed)
        shown = "; ".join(
            f"offset {f.offset} ({f.destination or 'no route'}): {f.reason}"
            for f in failed[:_SHOWN_FAILURES]
        )
        more = (
            f"; and {len(failed) - _SHOWN_FAILURES} more" if len(failed) > _SHOWN_FAILURES else ""
        )
        raise ApplicationError(
            f"{len(failed)} of {total} records of {input.topic}/{input.partition} "
            f"[{input.first_offset}..{input.last_offset}] failed: {shown}{more}",
            ExportRangeResult(exported=exported, failed=failed),
            type=RANGE_FAILED_ERROR_TYPE,
            non_retryable=True,
        )

    async def _start_record_workflows(
        self, input: ExportRangeInput, exported: int, failed: list[FailedRecord]
    ) -> ExportRangeResult:
        """Start the failed records' workflows (continuing as new past the first ones)."""
        now, rest = failed[:RECORD_WORKFLOWS_PER_RUN], failed[RECORD_WORKFLOWS_PER_RUN:]
        policies = {piece.destination.name: piece.destination for piece in input.slices}
        await asyncio.gather(*(self._start_record_workflow(input, f, policies) for f in now))
        if rest:
            workflow.continue_as_new(
                replace(input, continued=RangeContinued(exported=exported, to_start=rest))
            )
        return ExportRangeResult(exported=exported, failed=now)

    async def _start_record_workflow(
        self,
        input: ExportRangeInput,
        failed: FailedRecord,
        policies: dict[str, DestinationPolicy],
    ) -> None:
        """Start the record's own ``ExportRecord``, failing with the reason; one that exists
        already (a range run again) counts as started."""
        record_id, key = (
            workflow_id(
                group=group,
                topic=input.topic,
                topic_id=input.topic_id,
                partition=input.partition,
                offset=failed.offset,
            )
            for group in (_record_id_group(input), input.group)
        )
        policy = policies.get(failed.destination) if failed.destination else None
        error_type = failed.error_type or (
            PERMANENT_ERROR_TYPE if policy is not None else UNROUTABLE_ERROR_TYPE
        )
        record_input = ExportRecordInput(
            record=KafkaRecord(
                topic=input.topic,
                topic_id=input.topic_id,
                partition=input.partition,
                offset=failed.offset,
                key=None,
                value=None,
                timestamp_ms=-1,
            ),
            destination=policy,
            unroutable_reason=None if policy is not None else failed.reason,
            by_reference=True,
            idempotency_key=None if key == record_id else key,
            failed_in_range=RangeFailure(
                range_id=workflow.info().workflow_id,
                reason=failed.reason,
                error_type=error_type,
                attempts=failed.attempts,
            ),
        )
        destination = policy.name if policy is not None else "(unroutable)"
        try:
            await workflow.start_child_workflow(
                ExportRecord.run,
                record_input,
                id=record_id,
                parent_close_policy=ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(sa.TOPIC, input.topic),
                        SearchAttributePair(sa.PARTITION, input.partition),
                        SearchAttributePair(sa.OFFSET, failed.offset),
                        SearchAttributePair(sa.DESTINATION, destination),
                    ]
                ),
                static_summary=f"failed in range [{input.first_offset}..{input.last_offset}] "
                f"→ {destination}"[:200],
            )
        except WorkflowAlreadyStartedError:
            pass

    async def _export(
        self, input: ExportRangeInput, policy: DestinationPolicy, offsets: list[int]
    ) -> RangeBatchResult:
        try:
            result: RangeBatchResult = await workflow.execute_activity(
                EXPORT_RANGE_ACTIVITY,
                RangeBatch(
                    destination=policy.name,
                    group=input.group,
                    topic=input.topic,
                    topic_id=input.topic_id,
                    partition=input.partition,
                    offsets=offsets,
                ),
                task_queue=policy.task_queue,
                start_to_close_timeout=timedelta(seconds=policy.start_to_close_s),
                schedule_to_close_timeout=total_timeout(policy),
                heartbeat_timeout=heartbeat_timeout(policy),
                retry_policy=retry_policy(policy),
                result_type=RangeBatchResult,
            )
        except ActivityError as err:
            reason, error_type = failure_reason(err), failure_type(err)
            attempts = (
                policy.retry.maximum_attempts
                if err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
                else 0
            )
            return RangeBatchResult(
                destination=policy.name,
                written=0,
                failed=[
                    FailedRecord(o, policy.name, reason, error_type, attempts) for o in offsets
                ],
                detail="failed",
            )
        return replace(result, failed=[replace(f, attempts=result.attempt) for f in result.failed])


def _record_id_group(input: ExportRangeInput) -> str:
    """The group part of the range's records' workflow IDs: the range's own (a re-drive's
    ranges name their records under the re-drive), else the records' group."""
    try:
        parsed = parse_workflow_id(workflow.info().workflow_id)
        if parsed.redrive_run is not None:
            return redrive_group(parsed.group, parsed.redrive_run)
        return parsed.group
    except ValueError:
        return input.group
