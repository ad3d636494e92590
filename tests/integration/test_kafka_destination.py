"""The ``kafka`` destination kind against the real local Kafka: records routed to a second topic
in both ingest modes with key, value, headers and the identity header kept; a worker killed
mid-batch (what a downstream consumer then sees); a missing topic, a record too large for the
topic, a cluster that cannot be reached."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import RecordMetadata
from temporalio.client import Client

from activities.errors import PermanentExportError, RetryableExportError
from activities.kafka import IDEMPOTENCY_HEADER, KafkaDestinationConfig
from courier.core.ids import workflow_id
from courier_devtools.topics import create_topic, topic_id
from tests.faults.common import wait_until
from tests.faults.processes import Fleet, config_data
from tests.integration.harness import courier_running, eventually, pipeline_config
from tests.integration.test_batch_mode import closed_port, ranges_settled
from workflows.types import Blob, KafkaRecord, OutgoingRecord

pytestmark = pytest.mark.integration

FAST_RETRY = {"initial_interval": "100ms", "maximum_interval": "1s"}
TARGET_PARTITIONS = 3


@dataclass(frozen=True)
class Produced:
    """A record as a consumer of the destination topic reads it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp: int

    def header(self, name: str) -> str:
        [value] = [v for n, v in self.headers if n == name]
        assert value is not None
        return value.decode()


async def produce_records(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> list[RecordMetadata]:
    """Produce ``(key, value, headers)`` records; their metadata once all are acknowledged.

    Each gets its own explicit timestamp, put in its metadata: aiokafka's metadata gives every
    record of a batch the batch's first timestamp, not the record's.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    now_ms = int(time.time() * 1000)
    try:
        futures = [
            await producer.send(
                topic, key=key, value=value, headers=headers, timestamp_ms=now_ms + i
            )
            for i, (key, value, headers) in enumerate(records)
        ]
        sent = await asyncio.gather(*futures)
        return [meta._replace(timestamp=now_ms + i) for i, meta in enumerate(sent)]
    finally:
        await producer.stop()


async def read_all(
    bootstrap: str, topic: str, partitions: int, *, isolation_level: str = "read_committed"
) -> list[Produced]:
    """Every record in ``topic`` (of ``partitions`` partitions) now, from the beginning."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level
    )
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        found: list[Produced] = []
        while [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=1000)
            found += [
                Produced(m.partition, m.offset, m.key, m.value, tuple(m.headers), m.timestamp)
                for records in batches.values()
                for m in records
            ]
        return found
    finally:
        await consumer.stop()


def kafka_destination(name: str, bootstrap: str, topic: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "kafka",
        "bootstrap_servers": bootstrap,
        "topic": topic,
        "retry": FAST_RETRY,
        **extra,
    }


def source_records(n: int, prefix: str = "k") -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    return [
        (
            f"{prefix}-{i % 7}".encode(),
            json.dumps({"n": i}).encode(),
            [("trace", f"t{i}".encode()), ("bin", bytes([0xFF, i % 256]))],
        )
        for i in range(n)
    ]


async def assert_kept(
    bootstrap: str,
    source: str,
    sent: Sequence[RecordMetadata],
    records: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]],
    found: Sequence[Produced],
    group: str,
) -> None:
    """Each sent record is in ``found`` once, key, value, timestamp and headers kept, followed
    by Courier's identity header and source coordinates."""
    tid = await topic_id(bootstrap, source)
    by_key = {p.header(IDEMPOTENCY_HEADER): p for p in found}
    assert len(by_key) == len(found) == len(sent)
    for meta, (key, value, headers) in zip(sent, records, strict=True):
        identity = workflow_id(
            group=group, topic=source, topic_id=tid, partition=meta.partition, offset=meta.offset
        )
        p = by_key[identity]
        assert (p.key, p.value, p.timestamp) == (key, value, meta.timestamp)
        assert list(p.headers) == [
            *headers,
            (IDEMPOTENCY_HEADER, identity.encode()),
            ("courier.topic", source.encode()),
            ("courier.topic_id", tid.encode()),
            ("courier.partition", str(meta.partition).encode()),
            ("courier.offset", str(meta.offset).encode()),
        ]


@pytest.mark.parametrize("mode", ["per_record", "batch"])
async def test_records_routed_by_key_reach_the_topic_with_key_value_and_headers(
    stack_settings: Any, temporal_client: Client, unique: str, mode: str
) -> None:
    bootstrap = stack_settings.kafka_bootstrap
    source, target, name = f"t-{unique}", f"d-{unique}", f"kafka-{unique}"
    await create_topic(bootstrap, source, partitions=3)
    await create_topic(bootstrap, target, partitions=TARGET_PARTITIONS)
    ingest = {"mode": "batch", "max_records": 10, "max_wait": "200ms"} if mode == "batch" else {}
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=[kafka_destination(name, bootstrap, target)],
        routes={"rules": [{"prefix": "k-", "destination": name}], "unmatched": "skip"},
        ingest=ingest,
    )
    routed = source_records(25)
    others = source_records(5, prefix="other")
    async with courier_running(temporal_client, config):
        sent = await produce_records(bootstrap, source, routed + others)

        async def all_there() -> list[Produced] | None:
            found = await read_all(bootstrap, target, TARGET_PARTITIONS)
            return found if len(found) >= len(routed) else None

        found = await eventually(all_there, timeout=90)
    await assert_kept(bootstrap, source, sent[: len(routed)], routed, found, config.kafka.group)
    # One key, one partition: the destination's partitioner is Kafka's own (murmur2 of the key).
    partitions = defaultdict(set)
    for p in found:
        partitions[p.key].add(p.partition)
    assert all(len(parts) == 1 for parts in partitions.values()), partitions


async def test_worker_killed_mid_batch_leaves_duplicates_that_share_the_identity_header(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    """What a downstream consumer sees after ``kill -9`` of the worker mid-batch: every record
    at least once; a record there twice is there as identical copies with one
    ``courier.idempotency_key``; read_committed and read_uncommitted consumers see the same."""
    bootstrap = stack_settings.kafka_bootstrap
    source, target, name = f"t-{unique}", f"d-{unique}", f"kafka-{unique}"
    total = 3000
    await create_topic(bootstrap, source, partitions=3)
    await create_topic(bootstrap, target, partitions=TARGET_PARTITIONS)
    records = source_records(total)
    sent = await produce_records(bootstrap, source, records)
    fleet = Fleet(tmp_path, temporal_client)
    try:
        config = fleet.write_config(
            config_data(
                stack_settings,
                unique,
                # 300/s: each activity carries one second of records, produced evenly
                # spaced, so the worker is always in the middle of a batch.
                destinations=[kafka_destination(name, bootstrap, target, rate_limit=300)],
                routes={"default": name},
                ingest={"mode": "batch", "max_records": 1000, "max_wait": "200ms"},
            )
        )
        _, _, worker = await asyncio.gather(
            fleet.ingest(config), fleet.workflows(config), fleet.worker(config, name)
        )

        async def produced(n: int) -> bool:
            return len(await read_all(bootstrap, target, TARGET_PARTITIONS)) >= n

        await wait_until(
            lambda: produced(600), timeout=120, what="600 records", explain=fleet.explain()
        )
        worker.kill()
        assert await worker.wait() == -signal.SIGKILL
        await fleet.worker(config, name, role="replacement")

        async def every_record() -> bool:
            found = await read_all(bootstrap, target, TARGET_PARTITIONS)
            return len({p.header(IDEMPOTENCY_HEADER) for p in found}) >= total

        await wait_until(every_record, timeout=240, what="every record", explain=fleet.explain())
        await wait_until(
            lambda: ranges_settled(temporal_client, source),
            timeout=60,
            what="every range done",
            explain=fleet.explain(),
        )
    finally:
        await fleet.close()

    committed = await read_all(
        bootstrap, target, TARGET_PARTITIONS, isolation_level="read_committed"
    )
    uncommitted = await read_all(
        bootstrap, target, TARGET_PARTITIONS, isolation_level="read_uncommitted"
    )
    assert sorted(committed, key=_place) == sorted(uncommitted, key=_place)
    copies: dict[str, list[Produced]] = defaultdict(list)
    for p in committed:
        copies[p.header(IDEMPOTENCY_HEADER)].append(p)
    assert len(copies) == total
    tid = await topic_id(bootstrap, source)
    group = f"g-{unique}"
    for meta, (key, value, _) in zip(sent, records, strict=True):
        identity = workflow_id(
            group=group, topic=source, topic_id=tid, partition=meta.partition, offset=meta.offset
        )
        seen = {(p.key, p.value, p.headers, p.timestamp) for p in copies[identity]}
        assert len(seen) == 1, f"{identity}: copies differ: {seen}"
        [(got_key, got_value, _, _)] = seen
        assert (got_key, got_value) == (key, value)
    duplicated = sum(len(ps) - 1 for ps in copies.values())
    # The kill landed mid-batch: records it had produced were produced again by the retry.
    assert duplicated > 0, "no duplicates: the kill did not land in the middle of a batch"


def _place(p: Produced) -> tuple[int, int]:
    return p.partition, p.offset


def outgoing(offset: int, value: bytes, key: bytes | None = b"k") -> OutgoingRecord:
    return OutgoingRecord(
        idempotency_key=f"id-{offset}",
        record=KafkaRecord(
            topic="src",
            partition=0,
            offset=offset,
            key=Blob.of(key) if key is not None else None,
            value=Blob.of(value),
            timestamp_ms=1_700_000_000_000,
        ),
    )


def destination_config(bootstrap: str, topic: str, **extra: Any) -> KafkaDestinationConfig:
    return KafkaDestinationConfig.model_validate(
        {"name": "kafka", "kind": "kafka", "bootstrap_servers": bootstrap, "topic": topic, **extra}
    )


async def test_a_missing_topic_is_a_retryable_error_and_is_not_created(
    kafka_bootstrap: str, unique: str
) -> None:
    """The local broker auto-creates topics; the destination still never creates its topic."""
    topic = f"missing-{unique}"
    destination = destination_config(kafka_bootstrap, topic).create()
    with pytest.raises(RetryableExportError, match=f"topic {topic} at .* does not exist: create"):
        await destination.open()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()
    await create_topic(kafka_bootstrap, topic, partitions=1)
    destination = destination_config(kafka_bootstrap, topic).create()
    await destination.open()  # once created, it opens
    try:
        assert await destination.write([outgoing(0, b"{}")]) == "1 record produced"
    finally:
        await destination.close()


async def test_a_record_too_large_for_the_topic_fails_alone(
    kafka_bootstrap: str, unique: str
) -> None:
    """The topic's max.message.bytes is read at open: the record is not sent (a request the
    broker refused would fail the records sharing it); the others are produced and confirmed
    (a retry does not send them again)."""
    topic = f"small-{unique}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "4000"})]
        )
    finally:
        await admin.close()
    await eventually(lambda: _topic_known(kafka_bootstrap, topic), timeout=30)
    destination = destination_config(kafka_bootstrap, topic).create()
    await destination.open()
    batch = [outgoing(0, b"a"), outgoing(1, b"x" * 8000), outgoing(2, b"b")]
    try:
        with pytest.raises(PermanentExportError) as failed:
            await destination.write(batch)
    finally:
        await destination.close()
    assert failed.value.reason == (
        f"1 of 3 records failed; src/0/1: too large for {topic} at {kafka_bootstrap}: "
        f"{failed.value.reason.split(': ')[-1]}"
    )
    assert failed.value.reason.endswith(
        f"bytes as produced, over the 4000 bytes of {topic}'s max.message.bytes"
    )
    assert failed.value.confirmed == {"id-0", "id-2"}
    assert [p.value for p in await read_all(kafka_bootstrap, topic, 1)] == [b"a", b"b"]


async def _topic_known(bootstrap: str, topic: str) -> bool:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return topic in await consumer.topics()
    finally:
        await consumer.stop()


async def test_an_unreachable_cluster_is_a_retryable_error() -> None:
    port = closed_port()
    destination = destination_config(f"127.0.0.1:{port}", "anything").create()
    with pytest.raises(RetryableExportError) as failed:
        await destination.open()
    assert failed.value.cause == "unavailable"
    assert failed.value.reason.startswith(f"cannot reach Kafka at 127.0.0.1:{port}")
