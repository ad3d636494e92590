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
from prometheus_client import REGISTRY
from temporalio.api.common.v1 import WorkflowExecution as ExecutionRef
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from courier.config.model import CourierConfig
from courier.core.ids import workflow_id
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, topic_id
from ingest import dead_letter as dl
from tests.integration.harness import (
    courier_running,
    eventually,
    pipeline_config,
    wait_for_workflows,
)

pytestmark = pytest.mark.integration

COURIER = str(Path(sys.executable).with_name("courier"))
# The command runs the code under test (a checkout's own, when PYTHONPATH points at it).
PYTHONPATH = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}
FAST_RETRY = {"initial_interval": "100ms", "maximum_interval": "1s"}
BATCH = {"mode": "batch", "max_records": 50, "max_wait": "200ms"}
FAILED, RUNNING = WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.RUNNING


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
    """Delete every run of a workflow, as the namespace's retention would."""
    async for run in client.list_workflows(f"WorkflowId = '{wid}'"):
        await client.workflow_service.delete_workflow_execution(
            DeleteWorkflowExecutionRequest(
                namespace=client.namespace,
                workflow_execution=ExecutionRef(workflow_id=wid, run_id=run.run_id),
            )
        )


async def exists(client: Client, wid: str) -> bool:
    try:
        await client.get_workflow_handle(wid).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def completed(client: Client, wid: str) -> bool:
    description = await client.get_workflow_handle(wid).describe()
    return description.status == WorkflowExecutionStatus.COMPLETED


def with_dead_letter(config: CourierConfig, topic: str) -> CourierConfig:
    """``config`` with ``dead_letter.topic`` set."""
    return config.model_copy(
        update={"dead_letter": config.dead_letter.model_copy(update={"topic": topic})}
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


@pytest.mark.parametrize("mode", ["per_record", "batch"])
async def test_a_record_gone_from_kafka_is_a_coordinates_only_dead_letter(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path, mode: str
) -> None:
    """By reference: a record deleted before its export fails and is written without its bytes;
    a record with no route is written exactly as Kafka holds it."""
    out = tmp_path / "out.jsonl"
    name, dead = f"file-{unique}", f"dead-{unique}"
    config = with_dead_letter(
        pipeline_config(
            stack_settings,
            unique,
            destinations=[{"name": name, "kind": "file", "path": str(out)}],
            routes={"rules": [{"prefix": "k", "destination": name}]},
            ingest={"payloads": "reference"} if mode == "per_record" else BATCH,
        ),
        dead,
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
    records = f"{query} AND WorkflowType = 'ExportRecord'"
    unrouted_before = dead_lettered(dl.NO_DESTINATION)

    # Hand off with no destination worker: the exports wait in Temporal, k0 is then deleted.
    async with courier_running(temporal_client, config, destinations=[]):
        if mode == "per_record":
            await wait_for_workflows(temporal_client, query, 1, status=FAILED)
        await wait_for_workflows(
            temporal_client, query, 1 if mode == "batch" else 2, status=RUNNING
        )
    await delete_records(bootstrap, topic, before=1)
    async with courier_running(temporal_client, config, ingest=False):
        await wait_for_workflows(temporal_client, records, 2, status=FAILED)
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
    assert (dl.RANGE_ID in found) == (mode == "batch")

    unrouted = entries[b"x-unrouted"]
    assert unrouted.value == bytes([0, 255, 1]) and unrouted.timestamp == 1_700_000_000_002
    assert list(unrouted.headers[:2]) == headers
    found = context(unrouted)
    assert found[dl.CONNECT_EXCEPTION_CLASS] == "Unroutable" and dl.DESTINATION not in found
    assert found[dl.CONNECT_OFFSET] == "2" and found[dl.ATTEMPTS] == "0"
    assert dl.RECORD_MISSING not in found
    assert json.loads(out.read_text())["key"] == "k1"
    # Counted by destination (an entry written twice, its acknowledgement lost, counts twice).
    assert dead_lettered(name) >= 1
    assert dead_lettered(dl.NO_DESTINATION) >= unrouted_before + 1


def dead_lettered(destination: str) -> float:
    """``courier_records_dead_lettered_total`` of ``destination`` in this process."""
    return (
        REGISTRY.get_sample_value(
            "courier_records_dead_lettered_total", {"destination": destination}
        )
        or 0.0
    )


async def test_failed_records_of_a_range_are_dead_letters_and_replay_from_there(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    """3 of 500 records fail for good in batch mode: the 497 others are exported once, the 3
    have Failed workflows of their own that failures lists, show opens and replay exports, and
    are in the dead-letter topic byte for byte; once Temporal has forgotten them, replay
    --dead-letter exports them again under their own keys, once."""
    bad_at = {17, 250, 499}
    keys = [f"bad-{i}" if i in bad_at else f"good-{i}" for i in range(500)]
    sent = [
        (
            k.encode(),
            json.dumps({"n": i}).encode() + bytes([0xFF]),
            [("trace", f"t-{i}".encode()), ("bin", bytes([i % 256, 0, 255]))],
            1_700_000_000_000 + i,
        )
        for i, k in enumerate(keys)
    ]
    bootstrap = stack_settings.kafka_bootstrap
    async with Receiver() as receiver:
        receiver.script("/p/bad-", then=400)
        name, dead = f"api-{unique}", f"dead-{unique}"
        config = with_dead_letter(
            pipeline_config(
                stack_settings,
                unique,
                destinations=[
                    {
                        "name": name,
                        "kind": "rest",
                        "url": f"{receiver.url}/p/{{key}}",
                        "retry": FAST_RETRY,
                        "max_concurrency": 32,
                    }
                ],
                routes={"default": name},
                ingest={**BATCH, "max_records": 500},
            ),
            dead,
        )
        topic, group = config.kafka.topics[0], config.kafka.group
        path = write(config, tmp_path / "courier.yaml")
        await create_topic(bootstrap, topic, partitions=1)
        await create_topic(bootstrap, dead, partitions=1)
        offsets = await produce_exact(bootstrap, topic, sent)
        tid = await topic_id(bootstrap, topic)
        ids = {
            k: workflow_id(group=group, topic=topic, topic_id=tid, partition=0, offset=o)
            for k, o in zip(keys, offsets, strict=True)
        }
        bad = {k: ids[k] for k in keys if k.startswith("bad-")}
        good = {k: ids[k] for k in keys if k.startswith("good-")}
        records = f"WorkflowType = 'ExportRecord' AND CourierTopic = '{topic}'"

        async with courier_running(temporal_client, config):
            await wait_for_workflows(temporal_client, records, 3, status=FAILED)
            await wait_for_workflows(
                temporal_client, f"WorkflowType = 'ExportRange' AND CourierTopic = '{topic}'", 1
            )
            # The 497 others were exported once each, with their own keys.
            assert {
                r.path.rsplit("/", 1)[1]: r.idempotency_key
                for r in receiver.effect_requests("/p/good-")
            } == good
            assert len(receiver.times("/p/good-")) == 497 and receiver.effects("/p/bad-") == 0

            # failures lists the 3 records, show opens one.
            code, out, err = await courier("failures", "-d", name, "--json", "-c", path)
            assert code == 0, err
            [listed] = json.loads(out)["groups"]
            assert (listed["count"], listed["workflows"]) == (3, 3) and "400" in listed["reason"]
            code, out, err = await courier("show", f"{topic}/0/250", "--json", "-c", path)
            assert code == 0, err
            journey = json.loads(out)
            assert (journey["workflow_id"], journey["status"]) == (bad["bad-250"], "FAILED")
            assert journey["workflow_type"] == "ExportRecord"

            # The dead-letter topic holds the 3, byte for byte, with their failure's context.
            entries = await read_topic(bootstrap, dead, 3)
            assert sorted(e.key for e in entries) == sorted(k.encode() for k in bad)
            for entry in entries:
                i = int(entry.key.decode().split("-")[1])
                key, value, headers, timestamp = sent[i]
                own = [h for h in entry.headers if h[0] not in dl.CONTEXT_HEADERS]
                assert (entry.key, entry.value, own, entry.timestamp) == (
                    key,
                    value,
                    headers,
                    timestamp,
                )
                found = context(entry)
                assert found[dl.CONNECT_TOPIC] == topic and found[dl.CONNECT_OFFSET] == str(i)
                assert found[dl.CONNECT_EXCEPTION_CLASS] == "PermanentExportError"
                assert "400" in found[dl.CONNECT_EXCEPTION_MESSAGE]
                assert found[dl.DESTINATION] == name and found[dl.TOPIC_ID] == tid
                assert found[dl.WORKFLOW_ID] == found[dl.IDEMPOTENCY_KEY] == bad[f"bad-{i}"]
                assert found[dl.RANGE_ID].endswith("/range") and found[dl.ATTEMPTS] == "1"
                assert found[dl.FIRST_FAILURE] == found[dl.LAST_FAILURE]
            code, out, err = await courier("failures", "--dead-letter", dead, "--json", "-c", path)
            assert code == 0, err
            summarised = json.loads(out)
            assert (summarised["source"], summarised["topic"]) == ("dead_letter", dead)
            [summary] = summarised["groups"]
            assert (summary["destination"], summary["count"]) == (name, 3)

            # Fixed: replay exports exactly those 3 again.
            receiver.script("/p/bad-", then=200)
            before = len(receiver.times("/p/"))
            code, out, err = await courier("replay", "-d", name, "--yes", "-c", path)
            assert code == 0 and "replayed 3 of 3" in out, (out, err)
            await wait_for_workflows(temporal_client, records, 3)
            assert len(receiver.times("/p/")) == before + 3
            assert {
                r.path.rsplit("/", 1)[1]: r.idempotency_key
                for r in receiver.effect_requests("/p/bad-")
            } == bad

            # Temporal forgets them (as retention would); the dead letters remain.
            for wid in bad.values():
                await forget(temporal_client, wid)

            async def forgotten() -> bool:
                return all([not await exists(temporal_client, wid) for wid in bad.values()])

            await eventually(forgotten, timeout=60)
            code, out, err = await courier(
                "replay", "--dead-letter", dead, "--dry-run", "--since", "1h", "-c", path
            )
            assert code == 0 and "would start 3" in out, (out, err)
            before = len(receiver.times("/p/"))
            replay = ("replay", "--dead-letter", dead, "-d", name, "--run-id", "r1", "--yes")
            code, out, err = await courier(*replay, "-c", path)
            assert code == 0 and "started 3" in out, (out, err)

            async def exported_again() -> bool:
                return len(receiver.times("/p/")) >= before + 3 and all(
                    [await completed(temporal_client, wid) for wid in bad.values()]
                )

            await eventually(exported_again, timeout=60)
            again = receiver.requests[before:]
            assert sorted(r.idempotency_key or "" for r in again) == sorted(bad.values())
            assert all(r.duplicate for r in again), "the destination knows them by their keys"
            # Resumed: nothing left for r1; a new run finds them there and starts nothing.
            code, out, err = await courier(*replay, "-c", path)
            assert code == 0 and "nothing to replay" in out, (out, err)
            code, out, err = await courier(*replay[:-2], "r2", "--yes", "-c", path)
            assert code == 0 and "started 0" in out and "already there 3" in out, (out, err)
            assert len(receiver.times("/p/")) == before + 3
