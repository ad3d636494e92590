"""What the ingest loop asks of a hand-off strategy, and what it lends one.

The loop (``ingest.consumer``) owns Kafka: assignment, fetching into per-partition buffers,
pausing, topic IDs, commits and rebalances. A strategy turns buffered records into durable
hand-offs — one workflow per record (``ingest.per_record``), per key chain
(``ingest.ordered``) or per offset range (``ingest.ranges``) — and tells the loop nothing but
what it needs: the loop calls :meth:`Strategy.dispatch` after every poll, and tells the
strategy when a partition restarts or is revoked, so it drops what it holds of it.

Everything a strategy shares with the loop is in :class:`HandOffs`: the offset tracker (the
loop commits its safe points), the window of hand-offs in flight (the loop waits on it before
polling on), the tasks (the loop drains them on stop), counts, and the gate that says under
which topic ID a partition's records may be handed off now.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Protocol

from aiokafka import ConsumerRecord, TopicPartition
from temporalio.client import Client

from activities.formats import RecordDecoder, UndecodableError
from courier.config.model import CourierConfig
from ingest.handoff import to_kafka_record
from ingest.offsets import OffsetTracker
from ingest.routing import RouteDecision, Router

log = logging.getLogger("courier.ingest")

Buffers = dict[TopicPartition, collections.deque[ConsumerRecord]]
"""Records fetched and not yet taken by the strategy, per partition, in offset order."""


class Strategy(Protocol):
    """How buffered records become hand-offs; the loop's only view of a dispatch mode."""

    def dispatch(self, buffers: Buffers) -> None:
        """Take records from ``buffers`` and start hand-offs while the window has room."""

    def due_in_ms(self) -> int | None:
        """How soon :meth:`dispatch` is due with no new record (None: only when one comes)."""

    def holds(self, tp: TopicPartition) -> bool:
        """Whether it holds records of ``tp`` whose hand-off has not begun yet."""

    def on_restart(self, tp: TopicPartition) -> None:
        """Forget what is held of ``tp``: it is read again from a new position."""

    def on_revoke(self, revoked: set[TopicPartition]) -> None:
        """Forget what is held of ``revoked``: the next owner reads it again."""


class HandOffs:
    """What the loop owns and lends its strategy: offsets, window, tasks, counts, the gate."""

    def __init__(
        self,
        config: CourierConfig,
        client: Client,
        tracker: OffsetTracker,
        counts: collections.Counter[str],
        gate: Callable[[TopicPartition], str | None],
    ) -> None:
        self.config = config
        self.client = client
        self.router = Router(config.routes)
        self.decoder = (
            RecordDecoder.of(config.kafka.formats, config.kafka.schema_registry)
            if self.router.needs_record
            else None
        )
        """Decodes values for ``when`` rules (topics with formats); the loop prefetches schemas."""
        self.tracker = tracker
        self.counts = counts
        self.topic_id = gate
        """The topic ID a partition's records are handed off under now; None while they wait."""
        self.window = config.kafka.max_in_flight
        self.in_flight = 0
        """Hand-offs running (records, key turns or ranges), against :attr:`window`."""
        self.slot_freed = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self._epoch: collections.Counter[TopicPartition] = collections.Counter()

    def full(self) -> bool:
        """Whether the window of hand-offs in flight is full."""
        return self.in_flight >= self.window

    def epoch(self, tp: TopicPartition) -> int:
        """The current reading of ``tp``: a hand-off begun under an older one is not counted."""
        return self._epoch[tp]

    def restart(self, tp: TopicPartition) -> None:
        """Start ``tp``'s offsets afresh (a rewind, a restart, a revoke)."""
        self._epoch[tp] += 1
        self.tracker.forget({tp})

    def finish(self, tp: TopicPartition, offsets: list[int], epoch: int) -> None:
        """``offsets`` are handed off; they count only if ``tp`` was not read anew since."""
        if self._epoch[tp] == epoch:
            for offset in offsets:
                self.tracker.finish(tp, offset)

    def spawn(self, hand_off: Coroutine[Any, Any, None]) -> None:
        """Run ``hand_off`` in the window: it holds a slot until it ends."""
        self.in_flight += 1
        task = asyncio.create_task(hand_off)
        self.tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.in_flight -= 1
        self.slot_freed.set()

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the hand-offs in flight; cancel the rest (uncommitted)."""
        pending = set(self.tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                log.warning(
                    "%d hand-offs unfinished after %.0fs; left uncommitted", len(still), timeout
                )
                for task in still:
                    task.cancel()

    def route_input(self, record: ConsumerRecord, topic_id: str) -> bytes | RouteDecision | None:
        """The record's key, or its decision already made when a rule needs the whole record
        (decoded by its topic's format: a record that cannot be decoded fails alone)."""
        if not self.router.needs_record:
            key: bytes | None = record.key
            return key  # only the key is kept, as a batch range does
        whole = to_kafka_record(record, topic_id)
        if self.decoder is not None:
            try:
                whole = self.decoder.decode_now(whole)
            except UndecodableError as err:
                return RouteDecision("fail", None, f"cannot route: {err}")
        return self.router.decide(record.key, whole)

    async def prefetch_schemas(
        self, records: Mapping[TopicPartition, Iterable[ConsumerRecord]]
    ) -> None:
        """Have the schemas cached that routing needs to decode ``records``;
        RegistryUnavailableError when the registry cannot answer (the records wait)."""
        if self.decoder is not None:
            await self.decoder.prefetch(
                (tp.topic, record.key, record.value)
                for tp, some in records.items()
                for record in some
            )
