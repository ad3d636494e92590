"""Reading handed-off records back from Kafka by offset, for the workers.

One :class:`KafkaRecordSource` per worker process: a consumer with no group that assigns itself
the partition it is asked for, seeks to the first wanted offset and reads the contiguous range
in as few fetches as Kafka returns it. Before reading it checks that the topic still has the ID
recorded at hand-off, so a topic deleted and created again can never yield another record under
the same coordinates. Fetches are serialised (one consumer, one position); a range of a few
hundred records is one or two fetch requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from activities.errors import RetryableExportError
from activities.source import Fetched
from courier.config import KafkaConfig
from ingest.handoff import to_kafka_record
from ingest.kafka import consumer_options
from ingest.topic_ids import TopicIdError, TopicIds

FETCH_TIMEOUT_S = 30.0


class KafkaRecordSource:
    """A worker process's reader of records by (topic ID, partition, offset)."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self._kafka = kafka
        self._consumer: AIOKafkaConsumer | None = None
        self._topic_ids: TopicIds | None = None
        self._lock = asyncio.Lock()

    async def _open(self) -> tuple[AIOKafkaConsumer, TopicIds]:
        """Connect to Kafka on first use (no group: positions are never committed)."""
        if self._consumer is None or self._topic_ids is None:
            options = consumer_options(self._kafka)
            options.pop("max_poll_interval_ms", None)
            consumer = AIOKafkaConsumer(
                group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **options
            )
            try:
                await consumer.start()
            except KafkaError as err:
                await consumer.stop()
                raise RetryableExportError(
                    f"cannot read records from Kafka at {self._kafka.bootstrap_servers}: {err}"
                ) from err
            self._consumer, self._topic_ids = consumer, TopicIds(consumer._client)
        return self._consumer, self._topic_ids

    async def close(self) -> None:
        """Disconnect."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def fetch(
        self, *, topic: str, topic_id: str, partition: int, offsets: Sequence[int]
    ) -> Fetched:
        """The records at ``offsets`` of the partition, if the topic still has ``topic_id``."""
        async with self._lock:
            consumer, topic_ids = await self._open()
            try:
                return await self._fetch(consumer, topic_ids, topic, topic_id, partition, offsets)
            except (KafkaError, TopicIdError) as err:
                raise RetryableExportError(
                    f"reading {topic}/{partition} from Kafka failed: {err}"
                ) from err

    async def _fetch(
        self,
        consumer: AIOKafkaConsumer,
        topic_ids: TopicIds,
        topic: str,
        topic_id: str,
        partition: int,
        offsets: Sequence[int],
    ) -> Fetched:
        current = (await topic_ids.refresh([topic])).ids.get(topic)
        if current != topic_id:
            what = "deleted" if current is None else "deleted and created again"
            return Fetched({}, f"no longer in Kafka: topic {topic} was {what} since hand-off")
        tp = TopicPartition(topic, partition)
        if consumer.assignment() != {tp}:
            consumer.assign([tp])
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        wanted = set(offsets)
        first, last = min(offsets), max(offsets)
        missing = (
            f"no longer in Kafka (retention: {topic}/{partition} now starts at offset {begin})"
        )
        records = {}
        if last >= begin:
            consumer.seek(tp, max(first, begin))
            deadline = time.monotonic() + FETCH_TIMEOUT_S
            position = max(first, begin)
            while position <= last and position < end:
                if time.monotonic() > deadline:
                    raise RetryableExportError(
                        f"reading {topic}/{partition} [{first}..{last}] from Kafka took over "
                        f"{FETCH_TIMEOUT_S:.0f}s"
                    )
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=len(wanted))
                for record in batch.get(tp, ()):
                    if record.offset in wanted:
                        records[record.offset] = to_kafka_record(record, topic_id)
                position = await consumer.position(tp)
        return Fetched(records, missing)
