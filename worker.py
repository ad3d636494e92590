"""Courier's Temporal workers: one destination's activity queue, the workflow queue, or all.

``courier worker`` (see ``courier worker --help``) runs them. Several processes serving one
destination share its task queue, and the Temporal server holds them together to its rate limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import Worker

from activities.export import ExportActivity
from activities.registry import create_destination
from activities.source import RecordSource
from courier.config import CourierConfig
from courier.rates import format_rate
from ingest.fetch import KafkaRecordSource
from workflows.export_range import ExportRange
from workflows.export_record import ExportRecord

log = logging.getLogger("courier.worker")


def workflow_worker(client: Client, config: CourierConfig) -> Worker:
    """The worker of the export workflows (no activities, eager activities off)."""
    return Worker(
        client,
        task_queue=config.temporal.workflow_task_queue,
        workflows=[ExportRecord, ExportRange],
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


@contextlib.asynccontextmanager
async def destination_worker(
    client: Client, config: CourierConfig, name: str, source: RecordSource
) -> AsyncIterator[Worker]:
    """An opened destination and the worker of its task queue; closes the destination after."""
    dest_config = config.destination(name)
    destination = create_destination(dest_config)
    await destination.open()
    activity = ExportActivity(name, destination, source)
    try:
        yield Worker(
            client,
            task_queue=dest_config.task_queue,
            activities=[activity.export, activity.export_range],
            max_concurrent_activities=dest_config.max_concurrency,
            max_concurrent_activity_task_polls=min(dest_config.max_concurrency, 8),
            max_task_queue_activities_per_second=activity_rate(config, name),
        )
    finally:
        await destination.close()


def activity_rate(config: CourierConfig, name: str) -> float | None:
    """Activities/s of a destination's queue that keep its records/s at ``rate_limit``.

    In batch mode an activity carries up to ``batch_size`` records.
    """
    dest = config.destination(name)
    if dest.rate_limit is None:
        return None
    if config.ingest.mode == "batch":
        return dest.rate_limit / dest.batch_size
    return dest.rate_limit


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
        workers = [
            await stack.enter_async_context(destination_worker(client, config, name, source))
            for name in destinations
        ]
        if workflows:
            workers.append(workflow_worker(client, config))
        for name in destinations:
            dest = config.destination(name)
            log.info(
                "worker for %s on queue %s: rate %s, concurrency %d",
                name,
                dest.task_queue,
                format_rate(dest.rate_limit),
                dest.max_concurrency,
            )
        if workflows:
            log.info("workflow worker on queue %s", config.temporal.workflow_task_queue)
        await asyncio.gather(*(w.run() for w in workers))
