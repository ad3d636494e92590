"""Records by reference against the real stack: a record Kafka deleted before its export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from courier_devtools.topics import create_topic, produce
from tests.integration.harness import courier_running, file_config, wait_for_workflows

pytestmark = pytest.mark.integration


async def test_a_record_deleted_from_kafka_before_its_export_fails_readably(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = file_config(stack_settings, unique, out, ingest={"payloads": "reference"})
    topic, bootstrap = config.kafka.topics[0], stack_settings.kafka_bootstrap
    await create_topic(bootstrap, topic, partitions=1)
    await produce(bootstrap, topic, [(f"k{i}".encode(), b"{}") for i in range(4)])
    query = f"CourierTopic = '{topic}'"

    # Hand off with no destination worker running: the exports wait in Temporal.
    async with courier_running(temporal_client, config, destinations=[]):
        await wait_for_workflows(temporal_client, query, 4, status=WorkflowExecutionStatus.RUNNING)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:  # what retention does, sooner: the first two records are gone
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=2)})
    finally:
        await admin.close()

    async with courier_running(temporal_client, config, ingest=False):
        await wait_for_workflows(temporal_client, query, 2, status=WorkflowExecutionStatus.FAILED)
        await wait_for_workflows(temporal_client, query, 2)

    keys = sorted(json.loads(line)["key"] for line in out.read_text().splitlines())
    assert keys == ["k2", "k3"]
    failed = [
        e async for e in temporal_client.list_workflows(f"{query} AND ExecutionStatus = 'Failed'")
    ]
    for execution in failed:
        with pytest.raises(WorkflowFailureError) as caught:
            await temporal_client.get_workflow_handle(execution.id).result()
        message = str(caught.value.cause)
        assert "no longer in Kafka (retention" in message and "now starts at offset 2" in message
