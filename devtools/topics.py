"""Small Kafka chores for the demo, the benchmark and the tests: create a topic, produce records."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import RecordMetadata


async def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    """Create ``topic`` with ``partitions`` partitions (replication factor 1)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()


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
