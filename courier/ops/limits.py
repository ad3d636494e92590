"""``courier limit``: an operator's rate limit for a destination, at once and for all workers.

The limit is stored on the destination's task queue (the server enforces it across every
worker) and sent to the destination's rate controller (``DestinationState``) as its ceiling,
so rate control never raises the rate above it and returns to it when it ends.
"""

from __future__ import annotations

from temporalio.client import Client

from courier.config.model import CourierConfig
from courier.core.output import Output
from courier.core.rates import format_rate
from courier.core.task_queues import QueueState, describe, set_rate_limit
from courier.rate_control.workflow import (
    OPERATOR_LIMIT_SIGNAL,
    DestinationState,
    destination_state_id,
)
from workflows.types import WorkerReport


async def set_limit(
    client: Client, config: CourierConfig, name: str, records_per_second: float | None, reason: str
) -> QueueState:
    """Set (or with None, remove) the operator's limit; return the queue's state after."""
    dest = config.destination(name)
    await set_rate_limit(client, dest.task_queue, records_per_second, reason=reason)
    await client.start_workflow(
        DestinationState.run,
        args=[list[WorkerReport](), None],
        id=destination_state_id(dest.task_queue),
        task_queue=config.temporal.control_task_queue,
        start_signal=OPERATOR_LIMIT_SIGNAL,
        start_signal_args=[records_per_second],
    )
    return await describe(client, dest.task_queue)


def limit_json(
    name: str, state: QueueState, records_per_second: float | None, reason: str
) -> dict[str, object]:
    """What ``courier limit --json`` prints (docs/cli-json.md)."""
    return {
        "destination": name,
        "task_queue": state.task_queue,
        "requested": records_per_second,
        "reason": reason,
        "rate_limit": state.rate_limit,
        "rate_limit_source": state.rate_limit_source,
    }


async def command(
    client: Client,
    config: CourierConfig,
    name: str,
    records_per_second: float | None,
    reason: str,
    out: Output,
    *,
    as_json: bool = False,
) -> int:
    """``courier limit``: set the limit, then print the queue's limit and where it comes from."""
    state = await set_limit(client, config, name, records_per_second, reason)
    if as_json:
        out.write_json(limit_json(name, state, records_per_second, reason))
        return 0
    out.out.print(
        f"{state.task_queue}: rate limit now {format_rate(state.rate_limit)} "
        f"({state.rate_limit_source})"
    )
    return 0
