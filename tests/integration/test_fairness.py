"""Destinations on the shared workflow task queue: fairness and congestion priority.

A burst of one destination's records ahead of another's in the same partition must not make
the second wait until the whole burst had its workflow tasks: ingest gives every record's
workflow its destination as fairness key, and the server (the local stack turns fairness on)
dispatches the keys in turn. The control run, with ``ingest.fairness: false``, shows the
first-in first-out order the test would otherwise see, so the assertion can fail.

A congested destination's records (its exports would wait anyway) start at low priority: the
records of a destination that can take them go first, not merely in turn.
"""

from __future__ import annotations

import asyncio
import statistics
from datetime import datetime

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from courier.config.model import CourierConfig
from courier_devtools.stack import StackSettings
from courier_devtools.topics import create_topic, produce
from ingest.consumer import Ingest
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


async def dispatch_order(client: Client, ids: list[str]) -> list[str]:
    """``ids`` in the order their first workflow tasks went to a worker (polls until all did)."""
    started: dict[str, datetime] = {}

    async def all_dispatched() -> bool:
        missing = [wid for wid in ids if wid not in started]
        found = await asyncio.gather(*(first_task_started(client, w) for w in missing))
        started.update({w: t for w, t in zip(missing, found, strict=True) if t})
        return len(started) == len(ids)

    await eventually(all_dispatched, timeout=120, interval=1.0)
    return sorted(ids, key=lambda wid: started[wid])


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
    # Then the workflow worker drains the backlog in the order the server dispatches it.
    async with courier_running(client, cfg, ingest=False, destinations=[]):
        order = await dispatch_order(client, ids)
    await terminate(client, ids)
    return [i for i, wid in enumerate(order) if wid in urgent]


async def terminate(client: Client, ids: list[str]) -> None:
    await asyncio.gather(
        *(client.get_workflow_handle(w).terminate(reason="test over") for w in ids)
    )


async def test_a_burst_for_one_destination_does_not_queue_another_behind_it(
    temporal_client: Client, stack: StackSettings, unique: str
) -> None:
    fair = await urgent_ranks(temporal_client, stack, f"{unique}-fair", fairness=True)
    fifo = await urgent_ranks(temporal_client, stack, f"{unique}-fifo", fairness=False)
    # In turn: the urgent records' tasks go out among the first few dozen, not after the burst.
    assert max(fair) < 40, f"urgent dispatched at ranks {fair} of {BURST + URGENT} with fairness"
    # First in, first out without it (ingest's concurrent starts blur the order a little).
    assert statistics.median(fifo) >= BURST - 50, f"control run not first-in first-out: {fifo}"


async def congested(ingest: Ingest | None, destination: str) -> None:
    """Wait until ``ingest`` sees ``destination`` congested."""
    assert ingest is not None

    async def seen() -> bool:
        return ingest.load.congested(destination)

    await eventually(seen, timeout=60)


async def test_a_congested_destinations_records_yield_to_others(
    temporal_client: Client, stack: StackSettings, unique: str
) -> None:
    client = temporal_client
    slow, fast = f"slow-{unique}", f"fast-{unique}"
    cfg = pipeline_config(
        stack,
        unique,
        destinations=[
            {"name": slow, "kind": "rest", "url": "http://127.0.0.1:9/slow", "rate_limit": 1},
            {"name": fast, "kind": "rest", "url": "http://127.0.0.1:9/fast"},
        ],
        routes={"rules": [{"prefix": "s-", "destination": slow}], "default": fast},
    )
    topic, bootstrap = cfg.kafka.topics[0], cfg.kafka.bootstrap_servers
    query = f"TaskQueue = '{cfg.temporal.workflow_task_queue}'"
    await create_topic(bootstrap, topic, 1)
    # A backlog for slow (no worker serves it): 50 exports waiting, none dispatched.
    await produce(bootstrap, topic, [(f"s-old-{i}".encode(), b"{}") for i in range(50)])
    async with courier_running(client, cfg, destinations=[]) as ingest:
        await congested(ingest, slow)
    first = [wf.id async for wf in client.list_workflows(query)]
    # Ingest alone sees slow congested and starts the next records while no workflow worker
    # runs; then the workflow worker drains them in the order the server dispatches them.
    async with courier_running(client, cfg, workers=False) as ingest:
        await congested(ingest, slow)
        mixed = [(f"{k}-{i}".encode(), b"{}") for i in range(100) for k in ("s", "f")]
        await produce(bootstrap, topic, mixed)
        await wait_for_workflows(client, query, 250, status=None)
    ids = [wf.id async for wf in client.list_workflows(query) if wf.id not in first]
    fast_ids = {
        wf.id async for wf in client.list_workflows(f"{query} AND CourierDestination = '{fast}'")
    }
    assert len(ids) == 200 and len(fast_ids) == 100
    async with courier_running(client, cfg, ingest=False, destinations=[]):
        order = await dispatch_order(client, ids)
    await terminate(client, first + ids)
    fast_ranks = [i for i, wid in enumerate(order) if wid in fast_ids]
    # Taking turns alone would spread fast's records over all 200 ranks (the last near 199).
    assert max(fast_ranks) < 120, f"fast records dispatched at ranks {fast_ranks}"
