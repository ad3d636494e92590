"""Batch mode holds a destination to its rate limit in records, whatever the activities carry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.client import Client

from courier.core.task_queues import describe
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import busiest_window, courier_running, eventually, pipeline_config

pytestmark = pytest.mark.integration

LIMIT = 10.0
RECORDS = 30
EVERY_S = 0.2  # 5 records/s, half the limit


async def test_records_trickling_in_below_the_limit_keep_up(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    """Records arriving slower than the limit each end up in a range of their own, so the
    activities carry one record, not the ten (one second of the limit) they may: a queue limited
    in activities to the limit over ten would deliver one record a second. The server must hold
    the queue at the limit itself, in activities/s (the workers pace the records)."""
    async with Receiver() as receiver:
        name = f"api-{unique}"
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {"name": name, "kind": "rest", "url": f"{receiver.url}/api", "rate_limit": LIMIT}
            ],
            routes={"default": name},
            ingest={"mode": "batch"},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic)
        async with courier_running(temporal_client, config):
            for i in range(RECORDS):
                await produce(stack_settings.kafka_bootstrap, topic, [(f"k{i}".encode(), b"{}")])
                await asyncio.sleep(EVERY_S)

            async def all_arrived() -> bool:
                return receiver.effects("/api") >= RECORDS

            await eventually(all_arrived, timeout=120)
            queue = await describe(temporal_client, config.destination(name).task_queue)
    times = sorted(r.time for r in receiver.effect_requests("/api"))
    # Not LIMIT / 10: the queue's limit counts activities, and these carry one record each.
    assert (queue.rate_limit, queue.rate_limit_source) == (LIMIT, "worker"), queue
    assert busiest_window(times) <= 1.5 * LIMIT + 1
