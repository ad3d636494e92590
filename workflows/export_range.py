"""The ``ExportRange`` workflow (batch mode): export a contiguous offset range of a partition.

The range's records go by reference; the workflow fans out to one ``export_range`` activity per
destination and ``batch_size`` records, each on that destination's own task queue with its own
retry policy, all at once — a slow or failing destination's part never delays another's.
Records that fail for good are collected with their reasons; if any did, the workflow fails
listing them (and sets ``CourierFailedCount``), so the UI, ``courier status`` and ``courier
replay`` see them. Deterministic, and it imports nothing with side effects.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from courier import search_attributes as sa
    from workflows.export_record import (
        failure_reason,
        heartbeat_timeout,
        retry_policy,
        total_timeout,
    )
    from workflows.types import (
        DestinationPolicy,
        ExportRangeInput,
        ExportRangeResult,
        FailedRecord,
        RangeBatch,
        RangeBatchResult,
    )

EXPORT_RANGE_ACTIVITY = "export_range"
RANGE_FAILED_ERROR_TYPE = "RangeExportFailed"
_SHOWN_FAILURES = 5


def chunks(offsets: list[int], size: int) -> list[list[int]]:
    """``offsets`` cut into lists of at most ``size``."""
    return [offsets[i : i + size] for i in range(0, len(offsets), size)]


@workflow.defn(name="ExportRange")
class ExportRange:
    """Exports one offset range of one partition to the destinations of its records."""

    @workflow.run
    async def run(self, input: ExportRangeInput) -> ExportRangeResult:
        """Run every destination's batches at once; fail listing the records that failed."""
        parts = [
            self._export(input, piece.destination, offsets)
            for piece in input.slices
            for offsets in chunks(piece.offsets, max(1, piece.destination.batch_size))
        ]
        results = await asyncio.gather(*parts)
        failed = [*input.failed, *(f for result in results for f in result.failed)]
        exported = sum(result.written for result in results)
        if failed:
            workflow.upsert_search_attributes([sa.FAILED_COUNT.value_set(len(failed))])
            total = exported + len(failed)
            shown = "; ".join(
                f"offset {f.offset} ({f.destination or 'no route'}): {f.reason}"
                for f in failed[:_SHOWN_FAILURES]
            )
            more = (
                f"; and {len(failed) - _SHOWN_FAILURES} more"
                if len(failed) > _SHOWN_FAILURES
                else ""
            )
            raise ApplicationError(
                f"{len(failed)} of {total} records of {input.topic}/{input.partition} "
                f"[{input.first_offset}..{input.last_offset}] failed: {shown}{more}",
                ExportRangeResult(exported=exported, failed=failed),
                type=RANGE_FAILED_ERROR_TYPE,
                non_retryable=True,
            )
        return ExportRangeResult(exported=exported, failed=[])

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
            return result
        except ActivityError as err:
            reason = failure_reason(err)
            return RangeBatchResult(
                destination=policy.name,
                written=0,
                failed=[FailedRecord(o, policy.name, reason) for o in offsets],
                detail="failed",
            )
