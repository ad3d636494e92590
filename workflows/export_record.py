"""The ``ExportRecord`` workflow: hand one record to its destination's task queue.

In batch mode a record that fails for good in its range gets an ``ExportRecord`` too (started
by the range, ``failed_in_range`` set): its first run fails at once with the range's reason; a
replay (a reset: a new run) exports the record by reference like any other.

Deterministic: everything it needs (destination policy, retry policy, timeouts) comes from its
input, so config changes never break running workflows, and it imports nothing with side
effects.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

# Plain frozen dataclasses with no side effects: share them with the sandbox instead of
# re-importing them for every workflow run (that re-import was ~40% of the worker's CPU).
with workflow.unsafe.imports_passed_through():
    from workflows.types import (
        DestinationPolicy,
        ExportBatch,
        ExportReceipt,
        ExportRecordInput,
        ExportResult,
        KafkaRecord,
        OutgoingRecord,
    )

EXPORT_ACTIVITY = "export"
PERMANENT_ERROR_TYPE = "PermanentExportError"
UNROUTABLE_ERROR_TYPE = "Unroutable"
EXPORT_FAILED_ERROR_TYPE = "ExportFailed"
HAND_OFF_FAILED_ERROR_TYPE = "HandOffFailed"


def retry_policy(policy: DestinationPolicy) -> RetryPolicy:
    """The Temporal retry policy of a destination."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=policy.retry.initial_interval_s),
        backoff_coefficient=policy.retry.backoff_coefficient,
        maximum_interval=timedelta(seconds=policy.retry.maximum_interval_s),
        maximum_attempts=policy.retry.maximum_attempts,
        non_retryable_error_types=[PERMANENT_ERROR_TYPE],
    )


def total_timeout(policy: DestinationPolicy) -> timedelta | None:
    """The destination's limit over all attempts of an export, if it has one."""
    return timedelta(seconds=policy.schedule_to_close_s) if policy.schedule_to_close_s else None


def heartbeat_timeout(policy: DestinationPolicy) -> timedelta | None:
    """How long an attempt may go without a heartbeat before it counts as lost."""
    return timedelta(seconds=policy.heartbeat_s) if policy.heartbeat_s else None


def failure_reason(err: ActivityError) -> str:
    """The readable reason an export activity failed with."""
    cause = err.cause
    return cause.message if isinstance(cause, ApplicationError) else str(cause or err)


def export_failure(record: KafkaRecord, destination: str, reason: str) -> str:
    """The reason an ``ExportRecord`` fails with when its export failed."""
    return (
        f"export of {record.topic}/{record.partition}/{record.offset} to {destination} "
        f"failed: {reason}"
    )


@workflow.defn(name="ExportRecord")
class ExportRecord:
    """Exports one Kafka record to the destination its key was routed to."""

    @workflow.run
    async def run(self, input: ExportRecordInput) -> ExportReceipt:
        """Run the export activity on the destination's queue; fail readably if it cannot."""
        record = input.record
        if input.hand_off_failure is not None:
            raise ApplicationError(
                input.hand_off_failure, type=HAND_OFF_FAILED_ERROR_TYPE, non_retryable=True
            )
        if input.destination is None:
            raise ApplicationError(
                input.unroutable_reason or "the record's key has no route",
                type=UNROUTABLE_ERROR_TYPE,
                non_retryable=True,
            )
        policy = input.destination
        info = workflow.info()
        workflow_id = info.workflow_id
        in_range = input.failed_in_range
        if in_range is not None and info.run_id == info.first_execution_run_id:
            # A reset (courier replay) is a new run: it exports the record instead.
            raise ApplicationError(
                export_failure(record, policy.name, in_range.reason),
                type=EXPORT_FAILED_ERROR_TYPE,
                non_retryable=True,
            )
        try:
            result = await workflow.execute_activity(
                EXPORT_ACTIVITY,
                ExportBatch(
                    destination=policy.name,
                    records=[
                        OutgoingRecord(
                            idempotency_key=input.idempotency_key or workflow_id, record=record
                        )
                    ],
                    by_reference=input.by_reference,
                    with_keys=in_range is None,
                ),
                task_queue=policy.task_queue,
                start_to_close_timeout=timedelta(seconds=policy.start_to_close_s),
                schedule_to_close_timeout=total_timeout(policy),
                heartbeat_timeout=heartbeat_timeout(policy),
                retry_policy=retry_policy(policy),
                result_type=ExportResult,
            )
        except ActivityError as err:
            raise ApplicationError(
                export_failure(record, policy.name, failure_reason(err)),
                type=EXPORT_FAILED_ERROR_TYPE,
                non_retryable=True,
            ) from err
        return ExportReceipt(
            workflow_id=workflow_id,
            destination=policy.name,
            attempts=result.attempt,
            detail=result.detail,
        )
