"""Dead letters against the real stack: every failed record is in its dead-letter topic, byte
for byte with its failure's context, and `courier replay --dead-letter` exports it again under
its own identity after Temporal has forgotten it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete
from temporalio.api.common.v1 import WorkflowExecution as ExecutionRef
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus

from courier.config import CourierConfig
from courier.ids import workflow_id
from devtools.topics import create_topic, topic_id
from ingest import dead_letter as dl
from tests.integration.harness import (
    courier_running,
    pipeline_config,
    wait_for_workflows,
)

pytestmark = pytest.mark.integration

COURIER = str(Path(sys.executable).with_name("courier"))
# The command runs the code under test (a checkout's own, when PYTHONPATH points at it).
PYTHONPATH = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}
FAST_RETRY = {"initial_interval": "100ms", "maximum_interval": "1s"}


async def read_topic(bootstrap: str, topic: str, expected: int) -> list[ConsumerRecord]:
    """The first ``expected`` records of a one-partition topic (waiting for them)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        found: list[ConsumerRecord] = []
        deadline = asyncio.get_running_loop().time() + 30
        while len(found) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            found += batch.get(tp, [])
        return found
    finally:
        await consumer.stop()


async def produce_exact(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int]],
) -> list[int]:
    """Produce ``(key, value, headers, timestamp)`` records in order; their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, key=k, value=v, headers=h, timestamp_ms=t)
            for k, v, h, t in records
        ]
        return [md.offset for md in await asyncio.gather(*futures)]
    finally:
        await producer.stop()


async def delete_records(bootstrap: str, topic: str, before: int) -> None:
    """What retention does, sooner: offsets below ``before`` of partition 0 are gone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records(
            {TopicPartition(topic, 0): RecordsToDelete(before_offset=before)}
        )
    finally:
        await admin.close()


async def forget(client: Client, wid: str) -> None:
    """Delete a workflow, as the namespace's retention would."""
    await client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=client.namespace, workflow_execution=ExecutionRef(workflow_id=wid)
        )
    )


def write(config: CourierConfig, path: Path) -> str:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    return str(path)


async def courier(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        COURIER,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", **PYTHONPATH},
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def context(entry: ConsumerRecord) -> dict[str, str]:
    """The entry's context headers (the last of each name)."""
    return {
        name: (value or b"").decode() for name, value in entry.headers if name in dl.CONTEXT_HEADERS
    }


async def test_a_record_gone_from_kafka_is_a_coordinates_only_dead_letter(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    """Per-record mode by reference: a record deleted before its export fails and is written
    without its bytes; a record with no route is written from the workflow input, exactly."""
    out = tmp_path / "out.jsonl"
    name, dead = f"file-{unique}", f"dead-{unique}"
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=[{"name": name, "kind": "file", "path": str(out)}],
        routes={"rules": [{"prefix": "k", "destination": name}]},
        ingest={"payloads": "reference"},
    )
    config = config.model_copy(
        update={"dead_letter": config.dead_letter.model_copy(update={"topic": dead})}
    )
    topic, bootstrap = config.kafka.topics[0], stack_settings.kafka_bootstrap
    await create_topic(bootstrap, topic, partitions=1)
    await create_topic(bootstrap, dead, partitions=1)
    headers = [("trace", b"t-1"), ("empty", b"")]
    await produce_exact(
        bootstrap,
        topic,
        [
            (b"k0", b"gone", headers, 1_700_000_000_000),
            (b"k1", b"kept", headers, 1_700_000_000_001),
            (b"x-unrouted", bytes([0, 255, 1]), headers, 1_700_000_000_002),
        ],
    )
    tid = await topic_id(bootstrap, topic)
    query = f"CourierTopic = '{topic}'"

    # Hand off with no destination worker: the exports wait in Temporal, k0 is then deleted.
    async with courier_running(temporal_client, config, destinations=[]):
        await wait_for_workflows(temporal_client, query, 1, status=WorkflowExecutionStatus.FAILED)
        await wait_for_workflows(temporal_client, query, 2, status=WorkflowExecutionStatus.RUNNING)
    await delete_records(bootstrap, topic, before=1)
    async with courier_running(temporal_client, config, ingest=False):
        await wait_for_workflows(temporal_client, query, 2, status=WorkflowExecutionStatus.FAILED)
        await wait_for_workflows(temporal_client, query, 1)

    entries = {e.key: e for e in await read_topic(bootstrap, dead, 2)}
    assert len(entries) == 2, entries
    gone = entries[None]
    assert gone.value == b""
    assert [n for n, _ in gone.headers] == [n for n, _ in gone.headers if n in dl.CONTEXT_HEADERS]
    found = context(gone)
    wid = workflow_id(group=config.kafka.group, topic=topic, topic_id=tid, partition=0, offset=0)
    assert found[dl.CONNECT_TOPIC] == topic and found[dl.CONNECT_OFFSET] == "0"
    assert found[dl.CONNECT_PARTITION] == "0" and found[dl.TOPIC_ID] == tid
    assert found[dl.WORKFLOW_ID] == wid == found[dl.IDEMPOTENCY_KEY]
    assert found[dl.DESTINATION] == name
    assert found[dl.CONNECT_EXCEPTION_CLASS] == "PermanentExportError"
    assert "no longer in Kafka" in found[dl.CONNECT_EXCEPTION_MESSAGE]
    assert "no longer in Kafka" in found[dl.RECORD_MISSING]
    assert found[dl.ATTEMPTS] == "1"
    assert found[dl.FIRST_FAILURE] == found[dl.LAST_FAILURE]

    unrouted = entries[b"x-unrouted"]
    assert unrouted.value == bytes([0, 255, 1]) and unrouted.timestamp == 1_700_000_000_002
    assert list(unrouted.headers[:2]) == headers
    found = context(unrouted)
    assert found[dl.CONNECT_EXCEPTION_CLASS] == "Unroutable" and dl.DESTINATION not in found
    assert found[dl.CONNECT_OFFSET] == "2" and found[dl.ATTEMPTS] == "0"
    assert dl.RECORD_MISSING not in found
    assert json.loads(out.read_text())["key"] == "k1"
