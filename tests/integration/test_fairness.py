"""Destinations take turns on the shared workflow task queue (Temporal task-queue fairness).

A burst of one destination's records ahead of another's in the same partition must not make
the second wait until the whole burst had its workflow tasks: ingest gives every record's
workflow its destination as fairness key, and the server (the local stack turns fairness on)
dispatches the keys in turn. The control run, with ``ingest.fairness: false``, shows the
first-in first-out order the test would otherwise see, so the assertion can fail.
"""

from __future__ import annotations

import asyncio
import statistics
from datetime import datetime

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from courier.config import CourierConfig
from devtools.stack import StackSettings
from devtools.topics import create_topic, produce
from tests.integration.harness import (
    courier_running,
    eventually,
    pipeline_config,
    wait_for_workflows,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BURST = 150
URGENT = 5


def burst_config(stack: StackSettings, unique: str, *, fairness: bool) -> CourierConfig:
    """Two destinations whose workers never run here: only workflow tasks are measured."""
    return pipeline_config(
        stack,
        unique,
        destinations=[
            {"name": f"bulk-{unique}", "kind": "rest", "url": "http://127.0.0.1:9/bulk"},
            {"name": f"urgent-{unique}", "kind": "rest", "url": "http://127.0.0.1:9/urgent"},
        ],
        routes={
            "rules": [{"prefix": "u-", "destination": f"urgent-{unique}"}],
            "default": f"bulk-{unique}",
        },
        ingest={"fairness": fairness},
    )


async def first_task_started(client: Client, workflow_id: str) -> datetime | None:
    """When the workflow's first workflow task went to a worker; None if not yet."""
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            return event.event_time.ToDatetime()
    return None


async def urgent_ranks(
    client: Client, stack: StackSettings, unique: str, *, fairness: bool
) -> list[int]:
    """Dispatch ranks (0 = first) of the urgent records' first workflow tasks, of all 155."""
    cfg = burst_config(stack, unique, fairness=fairness)
    topic = cfg.kafka.topics[0]
    await create_topic(cfg.kafka.bootstrap_servers, topic, 1)
    await produce(
        cfg.kafka.bootstrap_servers,
        topic,
        [(f"b-{i}".encode(), b"{}") for i in range(BURST)]
        + [(f"u-{i}".encode(), b"{}") for i in range(URGENT)],
    )
    query = f"TaskQueue = '{cfg.temporal.workflow_task_queue}'"
    ids = [wf.id async for wf in client.list_workflows(query)]
    # Ingest alone first: every first workflow task waits in the queue's backlog.
    async with courier_running(client, cfg, workers=False):
        await wait_for_workflows(
            client, query, BURST + URGENT, status=WorkflowExecutionStatus.RUNNING
        )
    ids = [wf.id async for wf in client.list_workflows(query)]
    urgent = {
        wf.id
        async for wf in client.list_workflows(f"{query} AND CourierDestination = 'urgent-{unique}'")
    }
    assert len(ids) == BURST + URGENT and len(urgent) == URGENT
    started: dict[str, datetime] = {}
    # Then the workflow worker drains the backlog in the order the server dispatches it.
    async with courier_running(client, cfg, ingest=False, destinations=[]):

        async def all_dispatched() -> bool:
            missing = [wid for wid in ids if wid not in started]
            found = await asyncio.gather(*(first_task_started(client, w) for w in missing))
            started.update({w: t for w, t in zip(missing, found, strict=True) if t})
            return len(started) == len(ids)

        await eventually(all_dispatched, timeout=120, interval=1.0)
    for wid in ids:
        await client.get_workflow_handle(wid).terminate(reason="test over")
    order = sorted(ids, key=lambda wid: started[wid])
    return [i for i, wid in enumerate(order) if wid in urgent]


async def test_a_burst_for_one_destination_does_not_queue_another_behind_it(
    temporal_client: Client, stack: StackSettings, unique: str
) -> None:
    fair = await urgent_ranks(temporal_client, stack, f"{unique}-fair", fairness=True)
    fifo = await urgent_ranks(temporal_client, stack, f"{unique}-fifo", fairness=False)
    # In turn: the urgent records' tasks go out among the first few dozen, not after the burst.
    assert max(fair) < 40, f"urgent dispatched at ranks {fair} of {BURST + URGENT} with fairness"
    # First in, first out without it (ingest's concurrent starts blur the order a little).
    assert statistics.median(fifo) >= BURST - 50, f"control run not first-in first-out: {fifo}"
