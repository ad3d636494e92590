"""Topics for the suite: create one, fill it with N records (before timing), delete it after.

Self-contained (aiokafka only), so pipelines that do not use Courier run whatever state the
product code is in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

PARTITIONS = 3
PAD = "x" * 64
PRODUCE_TIMEOUT_S = 600.0

log = logging.getLogger("benchmarks")


def record(i: int) -> tuple[bytes, bytes]:
    """The i-th benchmark record: key ``key-i``, a small JSON value (~90 bytes)."""
    return f"key-{i}".encode(), f'{{"n":{i},"pad":"{PAD}"}}'.encode()


def records(n: int) -> Iterator[tuple[bytes, bytes]]:
    return (record(i) for i in range(n))


async def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    """Create ``topic`` (replication factor 1); raise if the broker refuses."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
        codes = [error[1] for error in response.topic_errors]
        if codes != [0]:
            raise RuntimeError(f"creating topic {topic} failed: error codes {codes}")
    finally:
        await admin.close()


async def delete_topic(bootstrap: str, topic: str) -> None:
    """Delete ``topic``; a failure is logged, not raised (it is clean-up)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        await admin.start()
        await admin.delete_topics([topic])
    except Exception as exc:  # clean-up only
        log.warning("could not delete topic %s: %s", topic, exc)
    finally:
        await admin.close()


async def fill_topic(bootstrap: str, topic: str, n: int) -> float:
    """Create ``topic`` and produce ``n`` records (acks=all); return the seconds it took."""
    t0 = time.monotonic()
    await create_topic(bootstrap, topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    try:

        async def send_all() -> None:
            pending = []
            for key, value in records(n):
                pending.append(await producer.send(topic, key=key, value=value))
                if len(pending) >= 10_000:  # bound the futures held at once
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)

        await asyncio.wait_for(send_all(), PRODUCE_TIMEOUT_S)
    finally:
        await producer.stop()
    return time.monotonic() - t0
