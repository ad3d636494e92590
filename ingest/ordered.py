"""The hand-off to a destination with ``ordering: key``: signal-with-start of the key's workflow.

A record of an ordered destination is handed off by signalling it to its key's ``ExportKey``
workflow (starting the workflow if it is not running). The hand-off is durable once Temporal
accepted the signal, and counts for the partition's commit point like a started workflow.

Order: the workflow drops a record at or below the last offset it took from the record's
partition (a repeat, read again after a crash or a rebalance). That is only right if no record
of a key is ever signalled before an earlier record of the same key was accepted, so the
records of a key are handed off one after the other (:class:`KeyChains`): whoever signals a
record, every earlier record of its key has been accepted — by this ingest, or by one before it,
as the group's committed offset says.

Failures follow the contract of ``ingest.handoff``: transient Temporal errors and Courier's own
misconfiguration are retried (the key and the partition wait); a record that cannot travel
(too large even by reference, unencodable, refused) is signalled as its coordinates with the
reason, and blocks its key visibly, like any record that fails for good.

:class:`Ordered` is the loop's strategy in per-record mode when a destination keeps key order:
per-record mode whose records of ordered destinations wait for their turn in their key's chain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from temporalio.client import Client
from temporalio.common import Priority, SearchAttributePair, TypedSearchAttributes

from courier.config.model import CourierConfig
from courier.core import search_attributes as sa
from courier.core.ids import key_workflow_id, workflow_id
from ingest.handoff import (
    Attempt,
    HandOff,
    Subject,
    checked_input,
    coordinates,
    deliver,
    failed_input,
)
from ingest.per_record import PerRecord
from ingest.priority import DestinationLoad
from ingest.routing import RouteDecision, key_text
from ingest.strategy import HandOffs
from workflows.export_key import RECORD_SIGNAL, ExportKey
from workflows.types import ExportKeyInput, ExportRecordInput, OrderedRecord

log = logging.getLogger("courier.ingest")

_SEARCH_KEY_LIMIT = 256

Chain = tuple[str, bytes]
"""``(destination, key)``: the records that must be handed off one after the other."""


class ChainBroken(Exception):
    """An earlier record of the key was not handed off (its hand-off was abandoned)."""


@dataclass
class Turn:
    """One record's place in its key's chain of hand-offs."""

    chain: Chain
    previous: asyncio.Future[bool] | None
    mine: asyncio.Future[bool]
    owner: KeyChains = field(repr=False)

    async def wait(self) -> None:
        """Wait until the key's previous record is handed off; ChainBroken if it never was."""
        if self.previous is None:
            return
        await asyncio.wait({self.previous})  # never cancels the previous record's future
        if not self.previous.result():
            raise ChainBroken(f"an earlier record of key {self.chain[1]!r} was not handed off")

    def release(self, handed_off: bool) -> None:
        """Let the key's next record go (if ``handed_off``; else it gives up too)."""
        if not self.mine.done():
            self.mine.set_result(handed_off)
        if self.owner._last.get(self.chain) is self.mine:
            del self.owner._last[self.chain]


class KeyChains:
    """Hands off the records of each (destination, key) one after the other, in claim order."""

    def __init__(self) -> None:
        self._last: dict[Chain, asyncio.Future[bool]] = {}

    def claim(self, chain: Chain) -> Turn:
        """The next turn of ``chain``; claim in offset order, then :meth:`Turn.wait`."""
        mine: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        turn = Turn(chain, self._last.get(chain), mine, self)
        self._last[chain] = mine
        return turn

    def __len__(self) -> int:
        return len(self._last)


def ordered_chain(
    config: CourierConfig, record: ConsumerRecord, decision: RouteDecision
) -> Chain | None:
    """The chain of a record whose destination keeps key order, or None if it is unordered."""
    if decision.destination is None or record.key is None:
        return None
    if config.destination(decision.destination).ordering != "key":
        return None
    return decision.destination, record.key


def key_search_attributes(record: ConsumerRecord, destination: str) -> TypedSearchAttributes:
    """Attributes of a key's workflow: its destination, key and topic."""
    pairs: list[SearchAttributePair[str]] = [
        SearchAttributePair(sa.DESTINATION, destination),
        SearchAttributePair(sa.TOPIC, record.topic),
    ]
    key = key_text(record.key)
    if key is not None:
        pairs.append(SearchAttributePair(sa.RECORD_KEY, key[:_SEARCH_KEY_LIMIT]))
    return TypedSearchAttributes(pairs)


async def hand_off_ordered(
    client: Client,
    config: CourierConfig,
    record: ConsumerRecord,
    topic_id: str,
    decision: RouteDecision,
    *,
    priority: Priority = Priority.default,
    max_backoff: float = 30.0,
) -> HandOff:
    """Signal the record to its key's workflow (starting it if needed); see the module doc.

    ``priority`` (``ingest/priority.py``) applies when this signal starts the key's workflow.

    Returns once Temporal accepted the signal; retries for as long as Temporal is unreachable
    or Courier is misconfigured. ``HandOff.workflow_id`` is the key's workflow.
    """
    destination = decision.destination
    if destination is None or record.key is None:
        raise ValueError(f"{coordinates(record)} has no key or destination to keep order by")
    wid = key_workflow_id(group=config.kafka.group, destination=destination, key=record.key)
    record_id = workflow_id(
        group=config.kafka.group,
        topic=record.topic,
        topic_id=topic_id,
        partition=record.partition,
        offset=record.offset,
    )
    key = key_text(record.key) or ""
    start = ExportKeyInput(destination=destination, key=key[:_SEARCH_KEY_LIMIT])
    attributes = key_search_attributes(record, destination)
    summary = f"key {key!r} → {destination}, in order"[:200]
    items: dict[str | None, OrderedRecord] = {}

    async def signal(failed_reason: str | None) -> bool:
        if failed_reason not in items:
            export: ExportRecordInput
            if failed_reason is None:
                export = await checked_input(client, config, record, topic_id, decision)
            else:
                export = failed_input(record, topic_id, decision, failed_reason)
            items[failed_reason] = OrderedRecord(idempotency_key=record_id, export=export)
        await client.start_workflow(
            ExportKey.run,
            start,
            id=wid,
            task_queue=config.temporal.workflow_task_queue,
            start_signal=RECORD_SIGNAL,
            start_signal_args=[items[failed_reason]],
            search_attributes=attributes,
            static_summary=summary,
            priority=priority,
        )
        return True

    _, failed_reason = await deliver(
        Subject.of(record),
        signal,
        Attempt(
            what=f"signalling {coordinates(record)} to {wid}",
            verb="signal",
            refused="the record's signal",
            failure="it blocks its key",
            record_id=record_id,
        ),
        max_backoff=max_backoff,
    )
    return HandOff(wid, started=True, failed_reason=failed_reason)


class Ordered(PerRecord):
    """Per-record mode where each key of an ordered destination is handed off in offset order."""

    def __init__(self, hand_offs: HandOffs, load: DestinationLoad) -> None:
        super().__init__(hand_offs, load)
        self.chains = KeyChains()
        """Records of ordered destinations: each key's hand-offs one after the other."""

    def _start(
        self,
        tp: TopicPartition,
        record: ConsumerRecord,
        topic_id: str,
        decision: RouteDecision,
        epoch: int,
    ) -> Coroutine[Any, Any, None]:
        chain = ordered_chain(self.hand_offs.config, record, decision)
        if chain is None:
            return super()._start(tp, record, topic_id, decision, epoch)
        # Claimed here, in offset order, so a key's records are signalled in that order.
        turn = self.chains.claim(chain)
        return self._in_turn(turn, tp, record, topic_id, decision, epoch)

    async def _in_turn(
        self,
        turn: Turn,
        tp: TopicPartition,
        record: ConsumerRecord,
        topic_id: str,
        decision: RouteDecision,
        epoch: int,
    ) -> None:
        handed_off = False
        try:
            await turn.wait()
            await self._hand_off(tp, record, topic_id, decision, epoch, hand_off_ordered)
            handed_off = True
        except ChainBroken as err:  # only when hand-offs are abandoned: left uncommitted
            log.warning("%s not handed off: %s", coordinates(record), err)
        finally:
            turn.release(handed_off)
