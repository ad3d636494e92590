"""Destination task queues on the server: backlog, workers, and the live rate limit.

A rate limit set here (by ``courier limit``, or by the workers applying their destination's
rate decision) is stored by the Temporal server on the queue and overrides the ``rate_limit``
the workers poll with, without restarting anything, until it is reset to ``default``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from temporalio.api.enums.v1 import RateLimitSource, TaskQueueType
from temporalio.api.taskqueue.v1 import RateLimit, TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, UpdateTaskQueueConfigRequest
from temporalio.client import Client

# A poller that has not polled for this long no longer counts as a live worker.
LIVE_POLLER_S = 60.0


@dataclass(frozen=True)
class QueueState:
    """What the server reports of one activity task queue."""

    task_queue: str
    backlog: int
    backlog_age_s: float
    dispatch_rate: float
    """Tasks/s the server handed to workers lately."""
    workers: int
    worker_identities: frozenset[str]
    """Identities of the live workers polling the queue."""
    rate_limit: float | None
    rate_limit_source: str
    """``override`` (``courier limit`` or rate control), ``worker`` (the workers' config) or
    ``none``."""
    rate_limit_author: str = ""
    """Who set the override in force (``set_rate_limit``'s ``identity``); empty without one."""


async def describe(client: Client, task_queue: str) -> QueueState:
    """Backlog, live workers and effective rate limit of an activity task queue."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            report_stats=True,
            report_config=True,
        )
    )
    now = time.time()
    live = frozenset(
        p.identity for p in response.pollers if now - p.last_access_time.seconds < LIVE_POLLER_S
    )
    effective = response.effective_rate_limit
    source = {
        RateLimitSource.RATE_LIMIT_SOURCE_API: "override",
        RateLimitSource.RATE_LIMIT_SOURCE_WORKER: "worker",
    }.get(effective.rate_limit_source, "none")
    return QueueState(
        task_queue=task_queue,
        backlog=response.stats.approximate_backlog_count,
        backlog_age_s=response.stats.approximate_backlog_age.ToTimedelta().total_seconds(),
        dispatch_rate=response.stats.tasks_dispatch_rate,
        workers=len(live),
        worker_identities=live,
        rate_limit=effective.requests_per_second if source != "none" else None,
        rate_limit_source=source,
        rate_limit_author=(
            response.config.queue_rate_limit.metadata.update_identity
            if source == "override"
            else ""
        ),
    )


async def set_rate_limit(
    client: Client,
    task_queue: str,
    rate: float | None,
    *,
    reason: str,
    identity: str = "courier limit",
) -> None:
    """Override the queue's rate limit (records/s) on the server; ``None`` restores the workers'."""
    update = UpdateTaskQueueConfigRequest.RateLimitUpdate(reason=reason)
    if rate is not None:
        update.rate_limit.CopyFrom(RateLimit(requests_per_second=rate))
    await client.workflow_service.update_task_queue_config(
        UpdateTaskQueueConfigRequest(
            namespace=client.namespace,
            identity=identity,
            task_queue=task_queue,
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            update_queue_rate_limit=update,
        )
    )
