"""``courier show``: one record's journey, inline and by reference, per record and in batch mode."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from temporalio.client import Client

from courier.core.ids import workflow_id
from courier.ops.show import show
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce, topic_id
from tests.integration.harness import courier_running, pipeline_config, wait_for_workflows

pytestmark = pytest.mark.integration

COURIER = str(Path(sys.executable).with_name("courier"))
# The command runs the code under test (a checkout's own, when PYTHONPATH points at it).
PYTHONPATH = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}


async def test_show_inline_record_with_retries(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    async with Receiver() as receiver:
        receiver.script("/api", first=[503])
        name = f"api-{unique}"
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/api/{{key}}",
                    "retry": {"initial_interval": "100ms"},
                }
            ],
            routes={"rules": [{"prefix": "order-", "destination": name}]},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        producer = AIOKafkaProducer(bootstrap_servers=stack_settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                topic,
                key=b"order-17",
                value=b'{"total":12,"items":[1,2]}',
                headers=[("trace", b"abc")],
            )
        finally:
            await producer.stop()
        async with courier_running(temporal_client, config):
            await wait_for_workflows(temporal_client, f"CourierTopic = '{topic}'", 1)

        journey = await show(temporal_client, config, f"{topic}/0/0")
        tid = await topic_id(stack_settings.kafka_bootstrap, topic)
        wid = workflow_id(
            group=config.kafka.group, topic=topic, topic_id=tid, partition=0, offset=0
        )
        assert journey.workflow_id == wid and journey.status == "COMPLETED"
        assert journey.record is not None and journey.record.source == "workflow input"
        assert journey.record.key.text == "order-17"
        assert journey.record.value.kind == "json"
        assert json.loads(journey.record.value.text) == {"total": 12, "items": [1, 2]}
        assert "\n" in journey.record.value.text, "pretty-printed"
        assert [(n, d.text) for n, d in journey.record.headers] == [("trace", "abc")]
        assert journey.route_now == f"routed to {name} by rule 1 (prefix 'order-')"
        assert journey.destination == name and journey.idempotency_key == wid
        [activity] = journey.activities
        assert activity.attempts == 2 and activity.outcome == "completed"
        assert "503" in (activity.error_before_last_attempt or "")
        assert journey.receipt is not None and journey.receipt["attempts"] == 2
        assert "HTTP 200" in journey.receipt["detail"] or "200" in journey.receipt["detail"]
        assert journey.ui_url is not None and journey.ui_url.startswith("http://127.0.0.1:8233/")

        config_file = tmp_path / "courier.yaml"
        config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
        out = await _courier("show", wid, "--json", "-c", str(config_file))
        assert json.loads(out)["coordinates"] == f"{topic}/0/0"
        text = await _courier("show", f"{topic}/0/0", "-c", str(config_file))
        for expected in ('"total": 12', "trace", "rule 1 (prefix 'order-')", "503", "Temporal UI"):
            assert expected in text, expected


@pytest.mark.parametrize("mode", ["per_record", "batch"])
async def test_show_record_by_reference_reads_kafka(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "out.jsonl"
    name = f"file-{unique}"
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=[{"name": name, "kind": "file", "path": str(out)}],
        routes={"default": name},
        ingest={"mode": mode, "payloads": "reference"},
    )
    topic = config.kafka.topics[0]
    await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
    binary = bytes(range(250, 256)) + bytes(range(20))
    await produce(stack_settings.kafka_bootstrap, topic, [(b"k0", b"text"), (b"k1", binary)])
    async with courier_running(temporal_client, config):
        await wait_for_workflows(
            temporal_client, f"CourierTopic = '{topic}'", 1 if mode == "batch" else 2
        )

    journey = await show(temporal_client, config, f"{topic}/0/1")
    assert journey.status == "COMPLETED"
    assert journey.workflow_type == ("ExportRange" if mode == "batch" else "ExportRecord")
    assert journey.record is not None and journey.record.source == "Kafka"
    assert journey.record.value.kind == "binary"
    assert journey.record.value.text.splitlines()[0].startswith(
        "00000000  fa fb fc fd fe ff 00 01 02 03 04 05 06 07 08 09  ................"
    )
    assert journey.destination == name
    assert (
        journey.idempotency_key is not None
        and journey.idempotency_key.endswith(f"{topic}@") is False
    )
    assert journey.idempotency_key.endswith("/0/1")
    assert journey.activities and journey.activities[0].outcome == "completed"


async def _courier(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        COURIER,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", **PYTHONPATH},
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()
