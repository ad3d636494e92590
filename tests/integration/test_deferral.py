"""A rate-bound destination's backlog waits as deferred workflow starts, not as queued exports.

Ingest starts the workflow of a record that would wait longer than ``congested_after`` for its
turn with a start delay: the export reaches the destination's queue shortly before its turn.
The control run, with ``defer_congested: 0s``, shows the backlog queued at once, so the bound
on the queue's backlog can fail.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.client import Client

from courier import metrics
from courier.ops.show import show
from courier.task_queues import describe
from devtools.receiver import Receiver
from devtools.topics import create_topic, produce
from tests.integration.harness import (
    busiest_window,
    courier_running,
    eventually,
    pipeline_config,
    wait_for_workflows,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LIMIT = 5.0
RECORDS = 120
LEAD_S = 2.0


async def export_backlog(
    stack_settings: Any, client: Client, unique: str, *, defer: bool
) -> tuple[int, int]:
    """Export RECORDS at LIMIT; the queue's largest backlog seen and the records deferred."""
    name = f"slow-{unique}"
    async with Receiver() as receiver:
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {"name": name, "kind": "rest", "url": f"{receiver.url}/api", "rate_limit": LIMIT}
            ],
            routes={"default": name},
            ingest={
                "congested_after": f"{LEAD_S:g}s",
                "defer_congested": "60s" if defer else "0s",
            },
        )
        queue = config.destination(name).task_queue
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        deferred_before = metrics.DEFERRED_STARTS.labels(name)._value.get()
        largest = 0
        async with courier_running(client, config):

            async def polled() -> bool:
                return (await describe(client, queue)).workers >= 1

            await eventually(polled)
            await produce(
                stack_settings.kafka_bootstrap,
                topic,
                [(f"k{i}".encode(), b"{}") for i in range(RECORDS)],
            )
            if defer:  # the last record's turn is ~20 s out: `courier show` says it waits
                await wait_for_workflows(client, f"CourierTopic = '{topic}'", RECORDS, status=None)
                journey = await show(client, config, f"{topic}/0/{RECORDS - 1}")
                assert journey.status == "RUNNING" and not journey.activities
                assert any("first workflow task deferred until" in n for n in journey.notes), (
                    journey.notes
                )
            while receiver.effects("/api") < RECORDS:
                largest = max(largest, (await describe(client, queue)).backlog)
                await asyncio.sleep(0.5)
        deferred = int(metrics.DEFERRED_STARTS.labels(name)._value.get() - deferred_before)
        requests = receiver.effect_requests("/api")
        assert len(requests) == RECORDS and receiver.duplicates("/api") == 0
        busiest = busiest_window(sorted(r.time for r in requests))
        assert busiest <= 1.5 * LIMIT + 1, f"{busiest} requests in one second, limit {LIMIT}/s"
        return largest, deferred


async def test_a_backlog_waits_as_deferred_starts(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    queued, deferred = await asyncio.wait_for(
        export_backlog(stack_settings, temporal_client, f"{unique}-d", defer=True), 120
    )
    control, none = await asyncio.wait_for(
        export_backlog(stack_settings, temporal_client, f"{unique}-c", defer=False), 120
    )
    lead_records = int(LEAD_S * LIMIT)
    # All but the first LEAD_S of turns wait as delayed starts; the queue holds about LEAD_S.
    assert deferred >= RECORDS - 2 * lead_records, f"{deferred} of {RECORDS} deferred"
    assert queued <= 3 * lead_records, f"the queue held {queued} exports with deferral"
    assert none == 0 and control >= RECORDS / 2, f"control run queued only {control}"
