"""Operators replay failed exports; the workflow code replays its recorded histories."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Replayer

from courier.ops import failures, replay
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import (
    courier_running,
    pipeline_config,
    wait_for_workflows,
)
from workflows.export_record import ExportRecord

pytestmark = pytest.mark.integration


async def test_failed_export_is_replayed_once_the_destination_recovers(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    async with Receiver() as receiver:
        receiver.script("/down", then=503)
        name = f"down-{unique}"
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/down",
                    "retry": {"initial_interval": "100ms", "maximum_attempts": 2},
                }
            ],
            routes={"default": name},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        await produce(stack_settings.kafka_bootstrap, topic, [(b"a", b"1"), (b"b", b"2")])
        query = f"CourierTopic = '{topic}'"
        async with courier_running(temporal_client, config):
            await wait_for_workflows(
                temporal_client, query, 2, status=WorkflowExecutionStatus.FAILED
            )
            assert len(receiver.times("/down")) == 4  # two attempts each, then Failed

            receiver.script("/down", then=200)
            found = await failures.find_failures(
                temporal_client, config, destination=name, extra=query
            )
            failed = [f.execution for f in found]
            assert len(failed) == 2
            for execution in failed:
                await replay.replay(temporal_client, execution, reason="test")
            await wait_for_workflows(temporal_client, query, 2)

    assert receiver.effects("/down") == 2
    keys = {r.idempotency_key for r in receiver.effect_requests("/down")}
    assert keys == {e.id for e in failed}, "a replay keeps the record's idempotency key"

    # Every run this test made (failed, reset, completed) replays against today's workflow code.
    histories = temporal_client.list_workflows(query).map_histories()
    result = await Replayer(workflows=[ExportRecord]).replay_workflows(
        histories, raise_on_replay_failure=False
    )
    assert result.replay_failures == {}
