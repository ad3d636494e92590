"""A healthy destination keeps its throughput beside a throttled and a down one.

The healthy endpoint answers each request after a delay and the destination keeps few requests in
flight, so its throughput is bounded by the endpoint, below what the shared path (ingest, the
workflow worker, Temporal) carries on this machine: whatever the other destinations cost must
not slow it. ``benchmarks/isolation.py`` measures the same at saturation, with targets; this test
asserts a generous bound so that a regression fails CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from temporalio.client import Client

from devtools.receiver import Receiver
from devtools.topics import create_topic, produce
from tests.integration.harness import courier_running, pipeline_config
from tests.integration.test_batch_mode import closed_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MIN_RATIO = 0.8
"""The healthy destination's throughput beside the others over its throughput alone."""
OTHER_RECORDS = 100
SCENARIOS = {
    # mode: (healthy records, endpoint's answer delay in s, max_concurrency, the others): at
    # most 10/s and 200/s, a third or less of what this machine carries in each mode, with
    # several requests in flight so that an export's dispatch latency does not bound it. In
    # per-record mode a throttled backlog's workflows load the shared Temporal server as much as
    # healthy records do (docs/benchmarks.md), so only the down destination is asserted there.
    "per_record": (60, 0.5, 5, ("d",)),
    "batch": (1000, 0.02, 4, ("t", "d")),
}


async def healthy_rate(
    client: Client, settings: Any, unique: str, mode: str, *, beside_others: bool
) -> float:
    """Records/s of the healthy destination, first effect to last, alone or beside others."""
    records, delay, concurrency, other_kinds = SCENARIOS[mode]
    async with Receiver() as receiver:
        receiver.script("/healthy/", delay=delay)
        ingest: dict[str, Any] = {"mode": mode}
        if mode == "batch":
            ingest |= {"max_records": 100, "max_wait": "200ms"}
        config = pipeline_config(
            settings,
            unique,
            destinations=[
                {
                    "name": f"healthy-{unique}",
                    "kind": "rest",
                    "url": f"{receiver.url}/healthy/{{key}}",
                    "max_concurrency": concurrency,
                },
                {
                    "name": f"throttled-{unique}",
                    "kind": "rest",
                    "url": f"{receiver.url}/throttled/{{key}}",
                    "rate_limit": 5,
                },
                {
                    "name": f"down-{unique}",
                    "kind": "rest",
                    "url": f"http://127.0.0.1:{closed_port()}/down/{{key}}",
                },
            ],
            routes={
                "rules": [
                    {"prefix": "t-", "destination": f"throttled-{unique}"},
                    {"prefix": "d-", "destination": f"down-{unique}"},
                ],
                "default": f"healthy-{unique}",
            },
            ingest=ingest,
        )
        topic = config.kafka.topics[0]
        await create_topic(settings.kafka_bootstrap, topic, partitions=3)
        try:
            async with courier_running(client, config):
                if beside_others:  # a backlog for each of the others, produced first
                    others = [f"{k}-{i}" for i in range(OTHER_RECORDS) for k in other_kinds]
                    await produce(
                        settings.kafka_bootstrap, topic, [(k.encode(), b"{}") for k in others]
                    )
                keys = [f"h-{i}".encode() for i in range(records)]
                await produce(settings.kafka_bootstrap, topic, [(k, b"{}") for k in keys])
                deadline = time.monotonic() + 120
                while receiver.effects("/healthy/") < records:
                    assert time.monotonic() < deadline, f"{receiver.effects('/healthy/')} effects"
                    await asyncio.sleep(0.1)
        finally:
            await terminate_running(client, config.temporal.workflow_task_queue)
    times = sorted(r.time for r in receiver.effect_requests("/healthy/"))
    return (len(times) - 1) / (times[-1] - times[0])


async def terminate_running(client: Client, task_queue: str) -> None:
    """Terminate the test's workflows still running: the throttled and down backlogs."""
    for queue in (task_queue, f"{task_queue}-control"):
        query = f"TaskQueue = '{queue}' AND ExecutionStatus = 'Running'"
        async for wf in client.list_workflows(query):
            with contextlib.suppress(Exception):
                await client.get_workflow_handle(wf.id, run_id=wf.run_id).terminate("test over")


@pytest.mark.parametrize("mode", list(SCENARIOS))
async def test_a_healthy_destination_keeps_its_rate_beside_failing_ones(
    stack_settings: Any, temporal_client: Client, unique: str, mode: str
) -> None:
    alone = await healthy_rate(
        temporal_client, stack_settings, f"{unique}a", mode, beside_others=False
    )
    beside = await healthy_rate(
        temporal_client, stack_settings, f"{unique}b", mode, beside_others=True
    )
    assert beside >= MIN_RATIO * alone, f"{beside:.1f}/s beside the others, {alone:.1f}/s alone"
