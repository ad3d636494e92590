"""``courier status``: each destination's queue state and its workflows by outcome."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import Client

from courier import search_attributes as sa
from courier.config import CourierConfig
from courier.ops.queues import QueueState, describe


@dataclass(frozen=True)
class DestinationStatus:
    """One destination as an operator sees it."""

    name: str
    queue: QueueState
    running: int
    completed: int
    failed: int


async def destination_statuses(client: Client, config: CourierConfig) -> list[DestinationStatus]:
    """The status of every configured destination, in config order."""
    result = []
    for dest in config.destinations:
        queue = await describe(client, dest.task_queue)
        counts = await client.count_workflows(
            f"{sa.DESTINATION.name} = '{dest.name}' GROUP BY ExecutionStatus"
        )
        by_status = {str(g.group_values[0]): g.count for g in counts.groups}
        result.append(
            DestinationStatus(
                name=dest.name,
                queue=queue,
                running=by_status.get("Running", 0),
                completed=by_status.get("Completed", 0),
                failed=by_status.get("Failed", 0),
            )
        )
    return result


@dataclass(frozen=True)
class RangeStatus:
    """Batch mode: the ``ExportRange`` workflows of this deployment's workflow queue."""

    running: int
    completed: int
    failed: int
    failed_records: int
    """Records of the failed ranges that could not be exported (``CourierFailedCount``)."""


async def range_status(client: Client, config: CourierConfig) -> RangeStatus:
    """Ranges by outcome, and how many records the failed ones could not export."""
    base = f"WorkflowType = 'ExportRange' AND TaskQueue = '{config.temporal.workflow_task_queue}'"
    counts = await client.count_workflows(f"{base} GROUP BY ExecutionStatus")
    by_status = {str(g.group_values[0]): g.count for g in counts.groups}
    failed_records = 0
    async for execution in client.list_workflows(f"{base} AND ExecutionStatus = 'Failed'"):
        failed_records += execution.typed_search_attributes.get(sa.FAILED_COUNT) or 0
    return RangeStatus(
        running=by_status.get("Running", 0),
        completed=by_status.get("Completed", 0),
        failed=by_status.get("Failed", 0),
        failed_records=failed_records,
    )
