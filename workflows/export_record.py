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
        DeadLetterInput,
        DestinationPolicy,
        ExportBatch,
        ExportReceipt,
        ExportRecordInput,
        ExportResult,
        KafkaRecord,
        OutgoingRecord,
    )

EXPORT_ACTIVITY = "export"
DEAD_LETTER_ACTIVITY = "dead_letter"
DEAD_LETTER_PATCH = "dead-letter"
"""Failures past this marker write the record to its dead-letter topic before the run fails."""
DEAD_LETTER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=0,
)
"""Forever: the run fails only once its record is in the dead-letter topic."""
DEAD_LETTER_TIMEOUT = timedelta(minutes=1)
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


def failure_type(err: ActivityError) -> str:
    """The type of the error an export activity failed with, e.g. ``PermanentExportError``."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type:
        return cause.type
    return type(cause or err).__name__


async def _dead_letter(
    input: ExportRecordInput, error_type: str, reason: str, attempts: int | None
) -> None:
    """Write the failed record to its dead-letter topic (retrying until it is written), on the
    workflow's own queue: never a destination's, whose rate it would spend."""
    if not workflow.patched(DEAD_LETTER_PATCH):
        return
    in_range = input.failed_in_range
    await workflow.execute_activity(
        DEAD_LETTER_ACTIVITY,
        DeadLetterInput(
            record=input.record,
            # A failed hand-off carries the coordinates only, as a record by reference does.
            by_reference=input.by_reference or input.hand_off_failure is not None,
            destination=input.destination.name if input.destination else None,
            idempotency_key=input.idempotency_key or workflow.info().workflow_id,
            error_type=error_type,
            reason=reason,
            attempts=attempts,
            range_id=in_range.range_id if in_range else None,
        ),
        start_to_close_timeout=DEAD_LETTER_TIMEOUT,
        retry_policy=DEAD_LETTER_RETRY,
        result_type=str,
    )


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
        in_range = input.failed_in_range
        if input.hand_off_failure is not None:
            await _dead_letter(input, HAND_OFF_FAILED_ERROR_TYPE, input.hand_off_failure, 0)
            raise ApplicationError(
                input.hand_off_failure, type=HAND_OFF_FAILED_ERROR_TYPE, non_retryable=True
            )
        if input.destination is None:
            reason = input.unroutable_reason or "the record's key has no route"
            await _dead_letter(input, UNROUTABLE_ERROR_TYPE, reason, 0)
            raise ApplicationError(reason, type=UNROUTABLE_ERROR_TYPE, non_retryable=True)
        policy = input.destination
        info = workflow.info()
        workflow_id = info.workflow_id
        if in_range is not None and info.run_id == info.first_execution_run_id:
            # A reset (courier replay) is a new run: it exports the record instead.
            await _dead_letter(input, in_range.error_type, in_range.reason, in_range.attempts)
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
            reason = failure_reason(err)
            await _dead_letter(input, failure_type(err), reason, None)
            raise ApplicationError(
                export_failure(record, policy.name, reason),
                type=EXPORT_FAILED_ERROR_TYPE,
                non_retryable=True,
            ) from err
        return ExportReceipt(
            workflow_id=workflow_id,
            destination=policy.name,
            attempts=result.attempt,
            detail=result.detail,
        )
