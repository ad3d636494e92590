"""Stopping a worker lets its in-flight exports finish: no cancelled attempt, no repeat."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from courier.core.ids import workflow_id
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce, topic_id
from tests.integration.harness import courier_running, eventually, pipeline_config
from workflows.types import ExportReceipt

pytestmark = pytest.mark.integration

ANSWER_DELAY_S = 2.0


async def test_stopping_finishes_in_flight_exports(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    records = 4
    async with Receiver() as receiver:
        receiver.script("/slow", delay=ANSWER_DELAY_S)
        name = f"api-{unique}"
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[{"name": name, "kind": "rest", "url": f"{receiver.url}/slow/{{key}}"}],
            routes={"default": name},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        keys = [f"k{i}" for i in range(records)]
        async with courier_running(temporal_client, config):
            await produce(
                stack_settings.kafka_bootstrap,
                topic,
                [(k.encode(), json.dumps({"k": k}).encode()) for k in keys],
            )

            async def all_in_flight() -> bool:
                return len(receiver.arrivals) >= records

            await eventually(all_in_flight)
            stopping = time.monotonic()
        # Leaving the block stopped Courier: that waited for the slow answers, not cancelled them.
        assert time.monotonic() - stopping >= ANSWER_DELAY_S / 2
        assert [r.status for r in receiver.requests] == [200] * records
        tid = await topic_id(stack_settings.kafka_bootstrap, topic)
        async with courier_running(temporal_client, config, ingest=False):
            receipts = [
                await temporal_client.get_workflow_handle(
                    workflow_id(
                        group=config.kafka.group, topic=topic, topic_id=tid, partition=0, offset=o
                    ),
                    result_type=ExportReceipt,
                ).result()
                for o in range(records)
            ]
    assert [r.attempts for r in receipts] == [1] * records, receipts
    assert receiver.effects("/slow") == records
    assert len(receiver.requests) == records, "no export was attempted twice"
