"""Per-record mode: one ``ExportRecord`` workflow per record (``ingest.mode: per_record``).

Buffered records are taken fairly — one per partition in turn — while the window has room,
each begun in the offset tracker in offset order and handed off concurrently
(``ingest.handoff.hand_off``, whose failure contract decides the record's outcome). A record's
task-queue priority follows its destination's load (``ingest.priority``).

Nothing a hand-off raises is dropped: the hand-off follows its failure contract, and anything
escaping it (a bug) is logged with the record's coordinates, counted, and retried with backoff;
the record is never lost and the partition's commit point waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

from aiokafka import ConsumerRecord, TopicPartition
from temporalio.client import Client
from temporalio.common import Priority

from courier.config.model import CourierConfig
from courier.core import metrics
from ingest.handoff import HandOff, coordinates, hand_off
from ingest.priority import DestinationLoad, record_priority
from ingest.routing import RouteDecision
from ingest.strategy import Buffers, HandOffs

log = logging.getLogger("courier.ingest")

MAX_BACKOFF_S = 30.0


class Send(Protocol):
    """A record's hand-off function: ``hand_off`` or ``hand_off_ordered``."""

    def __call__(
        self,
        client: Client,
        config: CourierConfig,
        record: ConsumerRecord,
        topic_id: str,
        decision: RouteDecision,
        *,
        priority: Priority,
    ) -> Awaitable[HandOff]:
        """Hand the record off; returns once it is."""


class PerRecord:
    """Hands off each record on its own, many at once within the window."""

    def __init__(self, hand_offs: HandOffs, load: DestinationLoad) -> None:
        self.hand_offs = hand_offs
        self.load = load

    def dispatch(self, buffers: Buffers) -> None:
        """Start hand-offs for buffered records while the window has room, fairly."""
        shared = self.hand_offs
        ready = [tp for tp, records in buffers.items() if records]
        while ready and not shared.full():
            for tp in list(ready):
                records = buffers[tp]
                topic_id = shared.topic_id(tp)
                if topic_id is None:
                    ready.remove(tp)
                    continue
                record = records.popleft()
                if not records:
                    ready.remove(tp)
                self._begin(tp, record, topic_id)
                if shared.full():
                    return

    def holds(self, tp: TopicPartition) -> bool:
        """Never: a record's hand-off begins when it is taken from its buffer."""
        return False

    def due_in_ms(self) -> int | None:
        """Never: every record taken is handed off at once."""
        return None

    def on_restart(self, tp: TopicPartition) -> None:
        """Nothing is held of a partition between dispatches."""

    def on_revoke(self, revoked: set[TopicPartition]) -> None:
        """Nothing is held of a partition between dispatches."""

    def _begin(self, tp: TopicPartition, record: ConsumerRecord, topic_id: str) -> None:
        shared = self.hand_offs
        next_offset = shared.tracker.next_offset(tp)
        if next_offset is not None and record.offset < next_offset:
            # The partition was rewound (a reset or a seek): start its offsets afresh.
            shared.restart(tp)
        shared.tracker.begin(tp, record.offset)
        decision = shared.router.route(shared.route_input(record, topic_id))
        shared.spawn(self._start(tp, record, topic_id, decision, shared.epoch(tp)))

    def _start(
        self,
        tp: TopicPartition,
        record: ConsumerRecord,
        topic_id: str,
        decision: RouteDecision,
        epoch: int,
    ) -> Coroutine[Any, Any, None]:
        """The record's hand-off, to run in the window (called in offset order)."""
        return self._hand_off(tp, record, topic_id, decision, epoch, hand_off)

    async def _hand_off(
        self,
        tp: TopicPartition,
        record: ConsumerRecord,
        topic_id: str,
        decision: RouteDecision,
        epoch: int,
        send: Send,
    ) -> None:
        """Hand the record off with ``send`` until it is; count it and finish its offset."""
        shared = self.hand_offs
        delay = 1.0
        while True:
            try:
                if decision.action == "skip":
                    log.info("skipping %s: %s", coordinates(record), decision.reason)
                    outcome = "skipped"
                else:
                    destination = decision.destination
                    priority = record_priority(
                        shared.config, destination, self.load.congested(destination)
                    )
                    result = await send(
                        shared.client,
                        shared.config,
                        record,
                        topic_id,
                        decision,
                        priority=priority,
                    )
                    if result.failed_reason is not None:
                        outcome = "failed"
                    else:
                        outcome = "started" if result.started else "existing"
                    shared.counts[f"to:{decision.destination or '(unroutable)'}"] += 1
                break
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: never lose the record, never drop the error
                log.exception("hand-off of %s failed; retrying", coordinates(record))
                metrics.HAND_OFF_FAILURES.labels(record.topic).inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        shared.counts[outcome] += 1
        metrics.INGESTED.labels(tp.topic, outcome).inc()
        shared.finish(tp, [record.offset], epoch)
