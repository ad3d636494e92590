"""Courier's Temporal workers: one destination's activity queue, the workflow queue, or all.

``courier worker`` runs them; several processes serving one destination share its task queue,
whose rate limit the Temporal server holds for all of them. This module only builds and runs
them: serving a destination is ``courier.serving``, rate control ``courier.rate_control``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.export import ExportActivity
from activities.pacing import activity_slots
from activities.source import RecordSource
from courier.config.model import CourierConfig
from courier.core.rates import format_rate
from courier.rate_control.workflow import DestinationState
from courier.serving.destination import serving
from ingest.dead_letter import DeadLetters
from ingest.fetch import KafkaRecordSource
from workflows.export_key import ExportKey
from workflows.export_range import ExportRange
from workflows.export_record import ExportRecord

log = logging.getLogger("courier.worker")


def control_worker(client: Client, config: CourierConfig) -> Worker:
    """The worker of the DestinationState workflows, on their own queue.

    Every worker process runs one, so a destination's rate control is answered by whichever
    process is free, not only by the workflow worker, which is the busiest at saturation.
    Nothing is cached (no sticky queue ties a state workflow to one busy process); its history
    is short, so replaying it per task is cheap.
    """
    return Worker(
        client,
        task_queue=config.temporal.control_task_queue,
        workflows=[DestinationState],
        max_concurrent_workflow_task_polls=2,
        max_cached_workflows=0,
    )


def workflow_worker(
    client: Client, config: CourierConfig, activities: Sequence[Callable[..., Any]] = ()
) -> Worker:
    """The worker of the export workflows, ordered keys' included (eager activities off), and
    of ``activities`` that must not run on a destination's queue (the dead letters)."""
    return Worker(
        client,
        task_queue=config.temporal.workflow_task_queue,
        # DestinationState too: runs started before it had its own queue continue here.
        workflows=[ExportRecord, ExportRange, ExportKey, DestinationState],
        activities=activities,
        # Eager activities would run on this worker, bypassing the destination's queue limit.
        disable_eager_activity_execution=True,
        max_concurrent_workflow_tasks=200,
        # Export workflows are short: half their workflow tasks are a new workflow's first, from
        # the normal queue, half come back on the sticky queue. The SDK's default (5 polls,
        # ratio 0.2) leaves one poller on the normal queue, where tasks then wait seconds; a
        # ratio of 1.0 would leave none on the sticky queue, whose tasks then time out (10 s)
        # before moving to the normal one. Half and half.
        max_concurrent_workflow_task_polls=16,
        nonsticky_to_sticky_poll_ratio=0.5,
        workflow_task_executor=ThreadPoolExecutor(max_workers=4),
    )


def destination_worker(
    client: Client, config: CourierConfig, name: str, activity: ExportActivity
) -> Worker:
    """The worker of one destination's task queue, polling at its configured rate."""
    dest = config.destination(name)
    shown = (name, dest.task_queue, format_rate(dest.rate_limit), dest.max_concurrency)
    log.info("worker for %s on queue %s: rate %s, concurrency %d", *shown)
    batch = config.ingest.mode == "batch"
    return Worker(
        client,
        task_queue=dest.task_queue,
        activities=[activity.export, activity.export_range],
        tuner=activity_slots(activity.pacer, slots=dest.max_concurrency, batch=batch),
        max_concurrent_activity_task_polls=min(dest.max_concurrency, 8),
        max_task_queue_activities_per_second=dest.rate_limit,
        graceful_shutdown_timeout=config.workers.graceful_shutdown,
    )


async def serve_destination(
    client: Client, config: CourierConfig, name: str, source: RecordSource
) -> None:
    """Run a destination's worker once it is open, until cancelled (see ``serving``)."""
    async with serving(client, config, name, source) as activity:
        await destination_worker(client, config, name, activity).run()


async def run_workers(
    client: Client,
    config: CourierConfig,
    *,
    destinations: Sequence[str] = (),
    workflows: bool = False,
) -> None:
    """Run the chosen workers until cancelled, then shut them down gracefully."""
    if not destinations and not workflows:
        raise ValueError("choose at least one destination or the workflow worker")
    async with contextlib.AsyncExitStack() as stack:
        source = KafkaRecordSource(config.kafka)  # connects on first use
        stack.push_async_callback(source.close)
        # A task group, not gather: cancelled, it waits for every worker's graceful shutdown.
        async with asyncio.TaskGroup() as group:
            for name in destinations:
                group.create_task(serve_destination(client, config, name, source))
            group.create_task(control_worker(client, config).run())
            if workflows:
                dead_letters = DeadLetters(config, source)
                stack.push_async_callback(dead_letters.close)
                worker = workflow_worker(client, config, [dead_letters.dead_letter])
                group.create_task(worker.run())
                log.info("workflow worker on queue %s", config.temporal.workflow_task_queue)
