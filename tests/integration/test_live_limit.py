"""An operator changes a destination's rate limit at run time, without restarting workers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.client import Client

from courier.core import task_queues as queues
from courier.serving.pacing import PACE_REFRESH_S
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import (
    beyond_limit,
    courier_running,
    eventually,
    pipeline_config,
)

pytestmark = pytest.mark.integration

RECORDS = 16
OVERRIDE = 2.0


async def test_rate_limit_override_holds_and_can_be_reset(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    async with Receiver() as receiver:
        name = f"api-{unique}"
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {"name": name, "kind": "rest", "url": f"{receiver.url}/api", "rate_limit": 50}
            ],
            routes={"default": name},
        )
        queue = config.destination(name).task_queue
        await create_topic(stack_settings.kafka_bootstrap, config.kafka.topics[0])
        async with courier_running(temporal_client, config):
            await eventually(lambda: _polled(temporal_client, queue))
            assert (await queues.describe(temporal_client, queue)).rate_limit_source == "worker"

            await queues.set_rate_limit(temporal_client, queue, OVERRIDE, reason="test")
            state = await queues.describe(temporal_client, queue)
            assert (state.rate_limit, state.rate_limit_source) == (OVERRIDE, "override")
            assert state.workers >= 1
            # Each worker re-reads its queue's rate every second and paces itself at it.
            await asyncio.sleep(2 * PACE_REFRESH_S)

            await produce(
                stack_settings.kafka_bootstrap,
                config.kafka.topics[0],
                [(f"k{i}".encode(), b"{}") for i in range(RECORDS)],
            )
            await eventually(lambda: _done(receiver), timeout=60)

            await queues.set_rate_limit(temporal_client, queue, None, reason="test")
            state = await queues.describe(temporal_client, queue)
            assert (state.rate_limit, state.rate_limit_source) == (50, "worker")

    # The override held, not the 50/s the workers were configured with: no stretch of the
    # requests holds more than 2/s lets through (16 at 50/s would come within a second).
    times = [r.time for r in receiver.effect_requests("/api")]
    assert (over := beyond_limit(times, OVERRIDE)) is None, f"{over} (worker says 50/s)"


async def _polled(client: Client, queue: str) -> bool:
    return (await queues.describe(client, queue)).workers >= 1


async def _done(receiver: Receiver) -> bool:
    return receiver.effects("/api") >= RECORDS
