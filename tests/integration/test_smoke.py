"""One smoke test per service of the local stack: each proves the service is real."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import pytest
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from temporalio.client import Client
    from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
    from temporalio.worker import Worker

    from courier_devtools.stack import SEARCH_ATTRIBUTES

pytestmark = pytest.mark.integration


@activity.defn
async def shout(text: str) -> str:
    """Upper-case ``text`` (runs on the worker, outside the workflow)."""
    return text.upper()


@workflow.defn
class SmokeWorkflow:
    """Calls one activity and returns its result."""

    @workflow.run
    async def run(self, text: str) -> str:
        return await workflow.execute_activity(
            shout, text, start_to_close_timeout=timedelta(seconds=10)
        )


async def test_kafka_round_trip(kafka_bootstrap: str, unique: str) -> None:
    topic = f"smoke-{unique}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"hello", key=b"k1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"smoke-{unique}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await consumer.getone()
        await consumer.commit()
        partitions = consumer.partitions_for_topic(topic)
    finally:
        await consumer.stop()

    assert (record.key, record.value) == (b"k1", b"hello")
    assert (record.partition, record.offset) == (sent.partition, sent.offset)
    assert partitions == {0, 1, 2}  # auto-created with num.partitions=3


async def test_temporal_workflow_completes(temporal_client: Client, unique: str) -> None:
    task_queue = f"smoke-{unique}"
    attrs = TypedSearchAttributes(
        [
            SearchAttributePair(SearchAttributeKey.for_keyword("CourierDestination"), "smoke"),
            SearchAttributePair(SearchAttributeKey.for_keyword("CourierTopic"), f"t-{unique}"),
            SearchAttributePair(SearchAttributeKey.for_int("CourierOffset"), 42),
        ]
    )
    async with Worker(
        temporal_client, task_queue=task_queue, workflows=[SmokeWorkflow], activities=[shout]
    ):
        handle = await temporal_client.start_workflow(
            SmokeWorkflow.run,
            "hello",
            id=f"smoke-{unique}",
            task_queue=task_queue,
            search_attributes=attrs,
            execution_timeout=timedelta(seconds=60),
        )
        assert await handle.result() == "HELLO"

    desc = await handle.describe()
    assert desc.typed_search_attributes.get(SearchAttributeKey.for_int("CourierOffset")) == 42
    # The custom search attributes are indexed: visibility queries find the run (eventually).
    query = f'CourierTopic = "t-{unique}" AND CourierOffset = 42'
    for _ in range(50):
        if (await temporal_client.count_workflows(query)).count == 1:
            break
        await asyncio.sleep(0.2)
    assert (await temporal_client.count_workflows(query)).count == 1
    assert {"CourierTopic", "CourierOffset"} <= set(SEARCH_ATTRIBUTES)


async def test_postgres_table_round_trip(pg_pool: asyncpg.Pool, unique: str) -> None:
    table = f"smoke_{unique}"
    async with pg_pool.acquire() as conn:
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text NOT NULL)")
        try:
            await conn.executemany(
                f"INSERT INTO {table} (id, body) VALUES ($1, $2)", [(1, "one"), (2, "two")]
            )
            await conn.execute(
                f"INSERT INTO {table} VALUES (2, 'TWO') "
                "ON CONFLICT (id) DO UPDATE SET body = excluded.body"
            )
            rows = await conn.fetch(f"SELECT id, body FROM {table} ORDER BY id")
            user = await conn.fetchval("SELECT current_user")
        finally:
            await conn.execute(f"DROP TABLE {table}")
    assert [tuple(r) for r in rows] == [(1, "one"), (2, "TWO")]
    assert user == "courier"
