"""Reading handed-off records back from Kafka by offset, for the workers.

One :class:`KafkaRecordSource` per worker process keeps a reader per partition it is asked for
(at most ``MAX_READERS``, least recently used closed first): a consumer with no group, assigned
that one partition. Ranges of a partition are mostly asked for in order, so a reader usually
finds its position already at the first wanted offset and its prefetched records ready; other
offsets cost a seek. Reads of one partition are serialised, reads of different partitions run
at once. Before reading, the reader checks that the topic still has the ID recorded at hand-off,
so a topic deleted and created again can never yield another record under the same coordinates.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from activities.errors import RetryableExportError
from activities.source import Fetched
from courier.config.model import KafkaConfig
from ingest.handoff import to_kafka_record
from ingest.kafka import KafkaUnreachable, check_brokers, consumer_options
from ingest.topic_ids import TopicIdError, TopicIds
from workflows.types import KafkaRecord

FETCH_TIMEOUT_S = 30.0
FETCH_MAX_WAIT_MS = 5
MAX_READERS = 16


class _Reader:
    """A consumer assigned to one partition."""

    def __init__(self, kafka: KafkaConfig, tp: TopicPartition) -> None:
        self.tp = tp
        self.kafka = kafka
        self.lock = asyncio.Lock()
        options = consumer_options(kafka, group=False)
        self.consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # At the log's end a prefetch waits up to fetch_max_wait_ms for data, holding up
            # the next seek.
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            **options,
        )
        self.topic_ids = TopicIds(self.consumer._client)
        self.started = False

    async def start(self) -> None:
        # The check says in one line what is wrong (refused, untrusted certificate, refused
        # login) where aiokafka would log errors and end with "Unable to bootstrap".
        try:
            await check_brokers(self.kafka)
        except KafkaUnreachable as err:
            raise RetryableExportError(f"cannot read records from Kafka: {err}") from err
        try:
            await self.consumer.start()
        except KafkaError as err:
            await self.consumer.stop()
            raise RetryableExportError(
                f"cannot read records from Kafka at {self.kafka.bootstrap_servers}: {err}"
            ) from err
        self.consumer.assign([self.tp])
        self.started = True

    async def read(self, topic_id: str, offsets: Sequence[int]) -> Fetched:
        tp, consumer = self.tp, self.consumer
        current = (await self.topic_ids.refresh([tp.topic])).ids.get(tp.topic)
        if current != topic_id:
            what = "deleted" if current is None else "deleted and created again"
            return Fetched({}, f"no longer in Kafka: topic {tp.topic} was {what} since hand-off")
        first, last = min(offsets), max(offsets)
        begin = (await consumer.beginning_offsets([tp]))[tp]
        missing = (
            f"no longer in Kafka (retention: {tp.topic}/{tp.partition} now starts at "
            f"offset {begin})"
        )
        records: dict[int, KafkaRecord] = {}
        if last < begin:
            return Fetched(records, missing, begin)
        start = max(first, begin)
        if await consumer.position(tp) != start:
            consumer.seek(tp, start)
        wanted = set(offsets)
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        end: int | None = None
        position = start
        while position <= last and (end is None or position < end):
            if time.monotonic() > deadline:
                raise RetryableExportError(
                    f"reading {tp.topic}/{tp.partition} [{first}..{last}] from Kafka took over "
                    f"{FETCH_TIMEOUT_S:.0f}s"
                )
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=last - position + 1)
            for record in batch.get(tp, ()):
                if record.offset in wanted:
                    records[record.offset] = to_kafka_record(record, topic_id)
            position = await consumer.position(tp)
            if not batch:
                end = (await consumer.end_offsets([tp]))[tp]
        return Fetched(records, missing, begin)

    async def close(self) -> None:
        await self.consumer.stop()


class KafkaRecordSource:
    """A worker process's reader of records by (topic ID, partition, offset)."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self._kafka = kafka
        self._readers: collections.OrderedDict[TopicPartition, _Reader] = collections.OrderedDict()

    async def close(self) -> None:
        """Disconnect every reader."""
        readers, self._readers = list(self._readers.values()), collections.OrderedDict()
        for reader in readers:
            await reader.close()

    async def fetch(
        self, *, topic: str, topic_id: str, partition: int, offsets: Sequence[int]
    ) -> Fetched:
        """The records at ``offsets`` of the partition, if the topic still has ``topic_id``."""
        tp = TopicPartition(topic, partition)
        reader = self._readers.get(tp)
        if reader is None:
            reader = self._readers[tp] = _Reader(self._kafka, tp)
            while len(self._readers) > MAX_READERS:
                _, oldest = self._readers.popitem(last=False)
                asyncio.get_running_loop().create_task(self._close_when_idle(oldest))
        self._readers.move_to_end(tp)
        async with reader.lock:
            if not reader.started:
                await reader.start()
            try:
                return await reader.read(topic_id, offsets)
            except (KafkaError, TopicIdError) as err:
                raise RetryableExportError(
                    f"reading {topic}/{partition} from Kafka failed: {err}"
                ) from err

    @staticmethod
    async def _close_when_idle(reader: _Reader) -> None:
        async with reader.lock:
            if reader.started:
                await reader.close()
