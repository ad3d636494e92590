"""Helpers for pipeline tests: a per-test config, Courier running in-process, Kafka I/O, waits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus

from courier.app.service import run_service
from courier.config.model import CourierConfig, parse_config
from ingest.consumer import Ingest


def pipeline_config(
    settings: Any,
    unique: str,
    *,
    destinations: list[dict[str, Any]],
    routes: dict[str, Any],
    kafka: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
) -> CourierConfig:
    """A config whose topic, group, task queues and destination names are this test's own."""
    return parse_config(
        {
            "kafka": {
                "bootstrap_servers": settings.kafka_bootstrap,
                "topics": [f"t-{unique}"],
                "group": f"g-{unique}",
                "commit_interval": "200ms",
                **(kafka or {}),
            },
            "temporal": {
                "address": settings.temporal_address,
                "workflow_task_queue": f"courier-workflows-{unique}",
            },
            "ingest": ingest or {},
            "destinations": destinations,
            "routes": routes,
        },
        environ={},
    )


def file_config(
    settings: Any,
    unique: str,
    out: Path,
    *,
    kafka: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
) -> CourierConfig:
    """This test's config: every record goes to one file destination at ``out``."""
    return pipeline_config(
        settings,
        unique,
        destinations=[{"name": f"file-{unique}", "kind": "file", "path": str(out)}],
        routes={"default": f"file-{unique}"},
        kafka=kafka,
        ingest=ingest,
    )


@contextlib.asynccontextmanager
async def courier_running(
    client: Client,
    config: CourierConfig,
    *,
    ingest: bool = True,
    workers: bool = True,
    destinations: list[str] | None = None,
    workflows: bool | None = None,
) -> AsyncIterator[Ingest | None]:
    """Courier's ingest and all its workers in this process, until the block ends.

    ``destinations`` chooses which destinations' workers run here (default: all of them; ``[]``:
    only the workflow worker, e.g. when worker processes serve the destinations); ``workflows``
    whether the workflow worker does (default: with ``workers``).
    """
    stop = asyncio.Event()
    ingest_ = Ingest(config, client) if ingest else None
    task = asyncio.create_task(
        run_service(
            client,
            config,
            ingest=ingest_,
            destinations=(
                []
                if not workers
                else [d.name for d in config.destinations]
                if destinations is None
                else destinations
            ),
            workflows=workers if workflows is None else workflows,
            stop=stop,
        )
    )
    try:
        yield ingest_
    finally:
        stop.set()
        await task


async def statuses(client: Client, query: str) -> dict[str, int]:
    """Workflow counts by status name for a visibility query."""
    counts: dict[str, int] = {}
    async for wf in client.list_workflows(query):
        name = wf.status.name if wf.status else "UNKNOWN"
        counts[name] = counts.get(name, 0) + 1
    return counts


async def wait_for_workflows(
    client: Client,
    query: str,
    expected: int,
    *,
    status: WorkflowExecutionStatus | None = WorkflowExecutionStatus.COMPLETED,
    timeout: float = 90.0,
) -> int:
    """Wait until ``expected`` workflows matching ``query`` (and ``status``) are visible."""
    full = query if status is None else f"{query} AND ExecutionStatus = '{_status_name(status)}'"
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = (await client.count_workflows(full)).count
        if count >= expected:
            return count
        await asyncio.sleep(0.5)
    raise AssertionError(
        f"only {count} of {expected} workflows matched {full!r} after {timeout:.0f}s; "
        f"by status: {await statuses(client, query)}"
    )


async def eventually(check: Any, *, timeout: float = 30.0, interval: float = 0.25) -> Any:
    """Await ``check()`` until it returns a truthy value; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met after {timeout:.0f}s; last value {value!r}")


def _status_name(status: WorkflowExecutionStatus) -> str:
    return status.name.title().replace("_", "")


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offset of each partition of ``topic`` (-1 where none)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        found = [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
        return [-1 if offset is None else offset for offset in found]
    finally:
        await consumer.stop()


def busiest_window(times: list[float], seconds: float = 1.0) -> int:
    """The most of ``times`` that fall in any window of ``seconds`` (sliding)."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def beyond_limit(times: list[float], limit: float) -> str | None:
    """The stretch of ``times`` most over what a limit of ``limit``/s lets through, said in
    words; None if no stretch is over it.

    A stretch of ``s`` seconds may hold ``limit * s`` requests plus a burst of ``limit + 1``:
    the most the Temporal server's limiter hands out (it starts with a full bucket: 11 tasks in
    the first second at 5/s). Courier's workers also pace their requests evenly at the limit,
    so a request may arrive up to about a second late (a busy machine) before the bound is
    reached. Load only spreads requests out, which no stretch can hold against the bound,
    unlike a rate measured over the run, where a few late requests at either end move the
    figure either way. A limit that does not hold still shows: the stretches outgrow the burst.
    """
    ordered = sorted(times)
    burst = limit + 1
    worst: tuple[float, int, int] | None = None  # (excess, first, last)
    for i, first in enumerate(ordered):
        for j in range(i + 1, len(ordered)):
            excess = (j - i + 1) - (burst + limit * (ordered[j] - first))
            if excess > 0 and (worst is None or excess > worst[0]):
                worst = (excess, i, j)
    if worst is None:
        return None
    _, i, j = worst
    return (
        f"{j - i + 1} requests in {ordered[j] - ordered[i]:.2f}s (from request {i} of "
        f"{len(ordered)}): more than {limit:g}/s with a burst of {burst:g} lets through"
    )


async def terminate_running(client: Client, task_queue: str) -> None:
    """Terminate the workflows still running on ``task_queue`` and on its control queue
    (backlogs a test leaves behind, a destination's DestinationState workflow)."""
    for queue in (task_queue, f"{task_queue}-control"):
        query = f"TaskQueue = '{queue}' AND ExecutionStatus = 'Running'"
        running = [wf async for wf in client.list_workflows(query)]
        await asyncio.gather(
            *(
                client.get_workflow_handle(wf.id, run_id=wf.run_id).terminate("test over")
                for wf in running
            ),
            return_exceptions=True,  # one that ended meanwhile is fine
        )
