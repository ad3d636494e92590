"""Pipeline ``temporal-ceiling``: the bare Temporal cost of one workflow + one activity per record.

N ``BenchNoop`` workflows, each running one no-op activity on a separate task queue (the shape
of ``ExportRecord``), started as fast as the same window Courier's ingest uses allows
(``kafka.max_in_flight``), with a default workflow worker and a default activity worker in this
process. No Kafka. Timed from the first start to the last workflow's close time (read from
visibility afterwards, so the polling interval does not count).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from temporalio.client import Client
from temporalio.worker import Worker

from benchmarks.common import CpuMeter, Measurement, cpu_between, timeout_for, wait_until
from benchmarks.histories import history_stats
from benchmarks.noop import BenchNoop, noop
from courier_devtools.stack.settings import StackSettings

PER_RECORD_SLOWEST = 5.0
"""records/s under which a per-record run is taken as stuck (the timeout's basis)."""


async def completed(client: Client, query: str) -> int:
    """How many workflows matching ``query`` are completed (visibility, eventually consistent)."""
    return (await client.count_workflows(f"{query} AND ExecutionStatus = 'Completed'")).count


async def last_close(client: Client, query: str) -> float:
    """The latest close time (epoch seconds) of the workflows matching ``query``."""
    latest = 0.0
    async for wf in client.list_workflows(query, page_size=1000):
        if wf.close_time is not None:
            latest = max(latest, wf.close_time.timestamp())
    return latest


async def run(
    settings: StackSettings, client: Client, records: int, window: int, history_sample: int
) -> Measurement:
    """N no-op workflows with one activity each, started through a window of ``window``."""
    unique = uuid.uuid4().hex[:10]
    wf_queue, act_queue = f"bench-wf-{unique}", f"bench-act-{unique}"
    query = f"TaskQueue = '{wf_queue}'"
    workflow_worker = Worker(
        client,
        task_queue=wf_queue,
        workflows=[BenchNoop],
        disable_eager_activity_execution=True,  # as Courier's (the activity is on another queue)
    )
    activity_worker = Worker(client, task_queue=act_queue, activities=[noop])
    sem = asyncio.Semaphore(window)

    async def start(i: int) -> None:
        async with sem:
            await client.start_workflow(
                BenchNoop.run, act_queue, id=f"bench/{unique}/{i}", task_queue=wf_queue
            )

    async def all_completed() -> bool:
        return await completed(client, query) >= records

    meter = CpuMeter(settings)
    async with workflow_worker, activity_worker:
        cpu_start = meter.snapshot()
        t0 = time.time()
        await asyncio.gather(*(start(i) for i in range(records)))
        all_started = time.time() - t0
        await wait_until(
            all_completed,
            timeout=timeout_for(records, PER_RECORD_SLOWEST),
            what=f"{records} completed ceiling workflows",
        )
        cpu_end = meter.snapshot()
    seconds = await last_close(client, query) - t0
    history = await history_stats(client, query, records, history_sample)
    return Measurement(
        pipeline="temporal-ceiling",
        records=records,
        seconds=seconds,
        cpu=cpu_between(cpu_start, cpu_end),
        history=history,
        notes=[f"all {records} workflows started after {all_started:.2f}s (window {window})"],
    )
