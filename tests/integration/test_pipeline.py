"""The core pipeline against the real stack: Kafka → ingest → Temporal → destinations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from courier.core.ids import workflow_id
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce, topic_id
from tests.integration.harness import (
    beyond_limit,
    courier_running,
    eventually,
    pipeline_config,
    terminate_running,
    wait_for_workflows,
)
from workflows.export_record import ExportRecord

pytestmark = pytest.mark.integration

FAST_RETRY = {"initial_interval": "100ms", "maximum_interval": "1s"}


def rest(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "rest", "url": url, "retry": FAST_RETRY, **extra}


async def rewind_group(bootstrap: str, group: str, topic: str, partitions: int = 3) -> None:
    """Commit offset 0 on every partition for ``group``, so it consumes the topic again."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()


async def test_every_record_reaches_its_destination_exactly_once(
    stack_settings: Any, temporal_client: Client, pg_pool: Any, unique: str, tmp_path: Path
) -> None:
    table = f"events_{unique}"
    archive = tmp_path / "archive.jsonl"
    async with Receiver() as receiver:
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                rest(f"api-{unique}", f"{receiver.url}/orders/{{key}}"),
                {"name": f"file-{unique}", "kind": "file", "path": str(archive)},
                {
                    "name": f"pg-{unique}",
                    "kind": "postgres",
                    "dsn": stack_settings.postgres_dsn,
                    "table": table,
                },
            ],
            routes={
                "rules": [
                    {"prefix": "order-", "destination": f"api-{unique}"},
                    {"prefix": "file-", "destination": f"file-{unique}"},
                ],
                "default": f"pg-{unique}",
            },
        )
        topic, group = config.kafka.topics[0], config.kafka.group
        await create_topic(stack_settings.kafka_bootstrap, topic)
        records = [
            (f"{prefix}{i}".encode(), json.dumps({"n": i, "kind": prefix}).encode())
            for prefix in ("order-", "file-", "event-")
            for i in range(30)
        ]
        await produce(stack_settings.kafka_bootstrap, topic, records)
        query = f"CourierTopic = '{topic}'"

        async with courier_running(temporal_client, config) as ingest:
            await wait_for_workflows(temporal_client, query, len(records))
            assert ingest is not None
            await eventually(lambda: _committed_all(ingest, len(records)))
        assert ingest.counts["started"] == 90 and ingest.counts["existing"] == 0

        # REST: one effect per record, keyed by the record's workflow ID.
        keys = {r.idempotency_key for r in receiver.effect_requests("/orders/")}
        assert len(keys) == 30
        tid = await topic_id(stack_settings.kafka_bootstrap, topic)
        assert all(k.startswith(f"courier/{group}/{topic}@{tid}/") for k in keys)
        assert receiver.duplicates() == 0
        # File: one line per record.
        lines = [json.loads(line) for line in archive.read_text().splitlines()]
        assert sorted(line["key"] for line in lines) == sorted(f"file-{i}" for i in range(30))
        # PostgreSQL: one row per record, the JSON value kept as JSONB.
        rows = await pg_pool.fetch(f'SELECT key, value FROM "{table}"')
        assert len(rows) == 30
        assert {json.loads(r["value"])["n"] for r in rows} == set(range(30))

        # The same group reading the topic again from offset 0 hands off nothing new.
        await rewind_group(stack_settings.kafka_bootstrap, group, topic)
        async with courier_running(temporal_client, config) as again:
            assert again is not None
            await eventually(lambda: _handed_off(again, len(records)), timeout=60)
        assert again.counts["existing"] == 90 and again.counts["started"] == 0
        assert (await temporal_client.count_workflows(query)).count == 90
        assert receiver.effects("/orders/") == 30
        assert len(archive.read_text().splitlines()) == 30
        assert await pg_pool.fetchval(f'SELECT count(*) FROM "{table}"') == 30


async def test_unroutable_key_fails_its_own_workflow_and_blocks_nothing(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=[
            {"name": f"file-{unique}", "kind": "file", "path": str(tmp_path / "out.jsonl")}
        ],
        routes={"rules": [{"prefix": "ok-", "destination": f"file-{unique}"}], "unmatched": "fail"},
        kafka={"topics": [f"t-{unique}"]},
    )
    topic = config.kafka.topics[0]
    await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
    records = [(f"ok-{i}".encode(), b"{}") for i in range(5)]
    records += [(b"nowhere", b"{}"), (None, b"{}")]
    records += [(f"ok-{i}".encode(), b"{}") for i in range(5, 10)]
    await produce(stack_settings.kafka_bootstrap, topic, records)

    async with courier_running(temporal_client, config):
        query = f"CourierTopic = '{topic}'"
        await wait_for_workflows(temporal_client, query, 10)
        await wait_for_workflows(temporal_client, query, 2, status=WorkflowExecutionStatus.FAILED)

    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 10
    group = config.kafka.group
    tid = await topic_id(stack_settings.kafka_bootstrap, topic)
    for offset, expected in (
        (5, "key 'nowhere' matches no rule"),
        (6, "a null key matches no rule"),
    ):
        handle = temporal_client.get_workflow_handle(
            workflow_id(group=group, topic=topic, topic_id=tid, partition=0, offset=offset)
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        assert expected in str(failure.value.cause)


async def test_rest_statuses_decide_retries(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    async with Receiver() as receiver:
        receiver.script("/rejects", then=422)
        receiver.script("/flaky", first=[500])
        receiver.script("/busy", first=[429], retry_after="2")
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                rest(f"rejects-{unique}", f"{receiver.url}/rejects"),
                rest(f"flaky-{unique}", f"{receiver.url}/flaky"),
                rest(f"busy-{unique}", f"{receiver.url}/busy"),
            ],
            routes={
                "rules": [
                    {"exact": name, "destination": f"{name}-{unique}"}
                    for name in ("rejects", "flaky", "busy")
                ]
            },
        )
        topic, group = config.kafka.topics[0], config.kafka.group
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        await produce(
            stack_settings.kafka_bootstrap,
            topic,
            [(b"rejects", b"x"), (b"flaky", b"x"), (b"busy", b"x")],
        )
        tid = await topic_id(stack_settings.kafka_bootstrap, topic)

        def handle(offset: int) -> Any:
            return temporal_client.get_workflow_handle_for(
                ExportRecord.run,
                workflow_id(group=group, topic=topic, topic_id=tid, partition=0, offset=offset),
            )

        async with courier_running(temporal_client, config):
            await wait_for_workflows(temporal_client, f"CourierTopic = '{topic}'", 2)
            with pytest.raises(WorkflowFailureError) as failure:
                await handle(0).result()
            flaky_receipt = await handle(1).result()
            busy_receipt = await handle(2).result()

    # 422 is outside the retry set: one request, no retry, a readable reason.
    assert len(receiver.times("/rejects")) == 1
    assert "422" in str(failure.value.cause)
    # 500 then 200: retried, exported once.
    assert receiver.effects("/flaky") == 1 and len(receiver.times("/flaky")) == 2
    assert flaky_receipt.attempts == 2
    # 429 with Retry-After: 2 waits at least 2 s before the next attempt.
    first, second = receiver.times("/busy")
    assert second - first >= 1.9
    assert busy_receipt.attempts == 2 and receiver.effects("/busy") == 1


async def test_throttled_destination_never_slows_an_unthrottled_one(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    """Interleaved records of a destination limited to 1/s and of an unlimited one: the
    unlimited one's are all delivered while most of the throttled ones still wait (were it held
    back by them, or by their limit, it would finish after them, or beside them at 1/s)."""
    limit, records = 1.0, 100
    async with Receiver() as receiver:
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                rest(f"slow-{unique}", f"{receiver.url}/slow", rate_limit=limit),
                rest(f"fast-{unique}", f"{receiver.url}/fast"),
            ],
            routes={
                "rules": [
                    {"prefix": "slow-", "destination": f"slow-{unique}"},
                    {"prefix": "fast-", "destination": f"fast-{unique}"},
                ]
            },
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic)
        produced = [
            (f"{kind}-{i}".encode(), b"{}") for i in range(records) for kind in ("slow", "fast")
        ]
        await produce(stack_settings.kafka_bootstrap, topic, produced)

        try:
            async with courier_running(temporal_client, config):
                # Generous: the time only bounds how long a failing run takes to say so.
                await eventually(lambda: _at_least(receiver, "/fast", records), timeout=150)
        finally:  # the throttled backlog would take 100 s: not needed any more
            await terminate_running(temporal_client, config.temporal.workflow_task_queue)

    fast = sorted(r.time for r in receiver.effect_requests("/fast"))
    slow = sorted(r.time for r in receiver.effect_requests("/slow"))
    ahead = sum(1 for t in slow if t <= fast[-1])
    t0 = min(fast[0], *slow[:1])
    assert ahead <= records // 2, (
        f"the throttled destination held the unthrottled one back: {ahead} of its {records} "
        f"records went before the unthrottled one's last; fast effects at "
        f"{[round(t - t0, 1) for t in fast[::10]]}s, slow at {[round(t - t0, 1) for t in slow]}s"
    )
    assert (over := beyond_limit(slow, limit)) is None, f"throttled destination: {over}"


async def _at_least(receiver: Receiver, prefix: str, n: int) -> bool:
    return receiver.effects(prefix) >= n


async def _handed_off(ingest: Any, n: int) -> bool:
    return ingest.counts["started"] + ingest.counts["existing"] >= n


async def _committed_all(ingest: Any, n: int) -> bool:
    return (
        await _handed_off(ingest, n)
        and ingest.tracker.committable() == {}
        and ingest.tracker.in_flight() == 0
    )
