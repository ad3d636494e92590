"""Small Kafka chores for the demo, the benchmark and the tests: create a topic, produce records."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.structs import RecordMetadata

from ingest.topic_ids import TopicIdError, fetch_topic_ids

TOPIC_ALREADY_EXISTS = 36


VISIBLE_WITHIN_S = 30.0


async def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    """Create ``topic`` with ``partitions`` partitions (replication factor 1); return once the
    broker's metadata shows it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()
    await _until_visible(bootstrap, topic)


async def _until_visible(bootstrap: str, topic: str, *, replaced: str | None = None) -> None:
    """Wait until the metadata shows ``topic`` (under another ID than ``replaced``): the
    controller acknowledges a creation before the broker's metadata cache has it, and a lookup
    in between finds no such topic, or the deleted one."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        deadline = time.monotonic() + VISIBLE_WITHIN_S
        while True:
            with contextlib.suppress(TopicIdError):  # e.g. no leader elected yet
                found = (await fetch_topic_ids(client, [topic]))[topic]
                if found is not None and found != replaced:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{topic} created, but not in the metadata after {VISIBLE_WITHIN_S:g}s"
                )
            await asyncio.sleep(0.1)
    finally:
        await client.close()


async def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> list[RecordMetadata]:
    """Produce ``(key, value)`` records; return their metadata once the broker acknowledged all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=value) for key, value in records]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def topic_id(bootstrap: str, topic: str) -> str:
    """The topic's Kafka ID, as ingest sees it (it names the topic in workflow IDs)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        found = (await fetch_topic_ids(client, [topic]))[topic]
    finally:
        await client.close()
    if found is None:
        raise LookupError(f"topic {topic!r} does not exist")
    return found


async def recreate_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    """Delete ``topic`` and create it again under the same name (its offsets restart at 0);
    return once the metadata shows the new topic."""
    old_id = await topic_id(bootstrap, topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        deadline = time.monotonic() + 30
        while True:  # the broker finishes a delete asynchronously
            response = await admin.create_topics(
                [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
            )
            codes = [error[1] for error in response.topic_errors]
            if codes == [0]:
                break
            if codes != [TOPIC_ALREADY_EXISTS] or time.monotonic() > deadline:
                raise RuntimeError(f"cannot create {topic} again: error codes {codes}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    await _until_visible(bootstrap, topic, replaced=old_id)
