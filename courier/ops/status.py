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
