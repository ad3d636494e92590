"""Topic IDs from the real broker: present, absent (and not created), and new after recreation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient

from courier_devtools.topics import create_topic
from ingest.topic_ids import TopicIdChange, TopicIds, fetch_topic_ids
from tests.integration.harness import eventually

pytestmark = pytest.mark.integration

TOPIC_ALREADY_EXISTS = 36


@pytest.fixture
async def client(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaClient]:
    client = AIOKafkaClient(bootstrap_servers=kafka_bootstrap)
    await client.bootstrap()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def _id_of(client: AIOKafkaClient, topic: str) -> str | None:
    return (await fetch_topic_ids(client, [topic]))[topic]


async def test_an_existing_topic_has_an_id(
    client: AIOKafkaClient, kafka_bootstrap: str, unique: str
) -> None:
    topic = f"topic-ids-{unique}"
    await create_topic(kafka_bootstrap, topic, partitions=1)
    # The broker's metadata may trail the controller's for a moment after creation.
    topic_id = await eventually(lambda: _id_of(client, topic), timeout=10, interval=0.1)
    assert isinstance(topic_id, str) and len(topic_id) == 22
    assert await _id_of(client, topic) == topic_id  # stable while the topic lives


async def test_a_missing_topic_is_none_and_not_created(
    client: AIOKafkaClient, admin: AIOKafkaAdminClient, unique: str
) -> None:
    topic = f"topic-ids-missing-{unique}"  # the local broker has auto.create.topics.enable=true
    assert await fetch_topic_ids(client, [topic]) == {topic: None}
    # A topic auto-created by a metadata request shows up within tens of milliseconds (and the
    # request that created it still answers "unknown"); watch for a second that none appears.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert topic not in await admin.list_topics()
        await asyncio.sleep(0.1)
    assert await fetch_topic_ids(client, [topic]) == {topic: None}


async def test_a_recreated_topic_has_a_new_id_and_refresh_reports_it(
    admin: AIOKafkaAdminClient, client: AIOKafkaClient, kafka_bootstrap: str, unique: str
) -> None:
    topic = f"topic-ids-recreated-{unique}"
    await create_topic(kafka_bootstrap, topic, partitions=1)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        ids = TopicIds(consumer._client)  # as the ingest loop uses it

        async def known() -> str | None:
            return (await ids.refresh([topic])).ids[topic]

        old = await eventually(known, timeout=10, interval=0.1)
        assert ids.get(topic) == old

        deleted = await admin.delete_topics([topic])
        assert [code for _, code, *_ in deleted.topic_error_codes] == [0]

        async def gone() -> bool:
            return await _id_of(client, topic) is None

        await eventually(gone, timeout=10, interval=0.1)
        await _create_again(admin, topic)

        async def new_id() -> str | None:
            topic_id = await _id_of(client, topic)
            return topic_id if topic_id not in (None, old) else None

        new = await eventually(new_id, timeout=10, interval=0.1)
        refreshed = await ids.refresh([topic])
        assert refreshed.changes == [TopicIdChange(topic, old, new)]
        assert refreshed.ids == {topic: new}
        assert ids.get(topic) == new
        assert (await ids.refresh([topic])).changes == []
    finally:
        await consumer.stop()


async def _create_again(admin: AIOKafkaAdminClient, topic: str, timeout: float = 10.0) -> None:
    """Create ``topic`` again, retrying while the broker still reports the deleted one."""
    deadline = time.monotonic() + timeout
    while True:
        response = await admin.create_topics([NewTopic(topic, 1, 1)])
        codes = [code for _, code, *_ in response.topic_errors]
        if codes == [0]:
            return
        if codes != [TOPIC_ALREADY_EXISTS] or time.monotonic() > deadline:
            raise AssertionError(f"creating {topic} again failed: {response}")
        await asyncio.sleep(0.2)
