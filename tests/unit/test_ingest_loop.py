"""The ingest loop's bookkeeping (buffers, window, revokes, retries) with a fake consumer.

No Kafka and no Temporal: a fake consumer stands in for aiokafka's, a fake ``TopicIds`` knows
the topic's ID, and the per-record strategy's ``hand_off`` is replaced by hand-offs the test
finishes when it wants. The loop is driven one step at a time (``_poll_once``, ``_dispatch``,
``on_revoked``), as ``Ingest.run`` and aiokafka's rebalance listener would call them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from temporalio.common import Priority

from courier.config.model import CourierConfig, parse_config
from ingest import consumer as consumer_module
from ingest import per_record as per_record_module
from ingest.consumer import Ingest
from ingest.handoff import HandOff
from ingest.routing import RouteDecision
from ingest.topic_ids import TopicIdRefresh

TOPIC = "orders"
TOPIC_ID = "Fw0ygiNXSnSO1Fhrqe3sDw"
TP = TopicPartition(TOPIC, 0)
OTHER = TopicPartition(TOPIC, 1)


def make_config(max_in_flight: int = 16) -> CourierConfig:
    return parse_config(
        {
            "kafka": {"topics": [TOPIC], "group": "g", "max_in_flight": max_in_flight},
            "destinations": [{"name": "out", "kind": "file", "path": "/nonexistent/out.jsonl"}],
            "routes": {"default": "out"},
        },
        environ={},
    )


def records(tp: TopicPartition, offsets: Iterable[int]) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(
            tp.topic, tp.partition, o, 1700000000000, 0, f"k{o}".encode(), b"{}", None, 2, 2, []
        )
        for o in offsets
    ]


class FakeConsumer:
    """What the loop uses of ``AIOKafkaConsumer``; getmany hands out the queued batches."""

    def __init__(self, owned: set[TopicPartition]) -> None:
        self.owned = set(owned)
        self.paused_tps: set[TopicPartition] = set()
        self.batches: list[dict[TopicPartition, list[ConsumerRecord]]] = []
        self.poll_timeouts: list[int] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.committed_metadata: dict[TopicPartition, str] = {}
        self.positions: dict[TopicPartition, int] = {}
        """The consumer's position per partition (unset: 0, never past a commit point)."""
        self.seeks: list[tuple[TopicPartition, int | None]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)

    def paused(self) -> set[TopicPartition]:
        return self.paused_tps & self.owned

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_tps.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_tps.difference_update(partitions)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        self.poll_timeouts.append(timeout_ms)
        await asyncio.sleep(0)
        return self.batches.pop(0) if self.batches else {}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    @property
    def _coordinator(self) -> FakeConsumer:
        return self

    async def fetch_committed_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        return {
            tp: OffsetAndMetadata(self.committed_offsets[tp], self.committed_metadata.get(tp, ""))
            for tp in partitions
            if tp in self.committed_offsets
        }

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.seeks.extend((tp, None) for tp in partitions)

    async def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        self.commits.append({tp: offset for tp, (offset, _) in offsets.items()})
        for tp, (offset, metadata) in offsets.items():
            self.committed_offsets[tp] = offset
            self.committed_metadata[tp] = metadata


class FakeTopicIds:
    """Every topic has the ID in ``ids`` (None: the topic does not exist)."""

    def __init__(self, ids: dict[str, str | None]) -> None:
        self.ids = ids

    def get(self, topic: str) -> str | None:
        return self.ids.get(topic)

    async def refresh(self, topics: Iterable[str]) -> TopicIdRefresh:
        return TopicIdRefresh({t: self.ids.get(t) for t in topics}, [])


@dataclass
class Call:
    record: ConsumerRecord
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def offset(self) -> int:
        return int(self.record.offset)


class FakeHandOffs:
    """Stands in for ``ingest.handoff.hand_off``: each call waits until the test finishes it."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[Call] = []
        self.failures = failures

    async def __call__(
        self,
        client: Any,
        config: CourierConfig,
        record: ConsumerRecord,
        topic_id: str,
        decision: RouteDecision,
        *,
        priority: Priority,
    ) -> HandOff:
        call = Call(record)
        self.calls.append(call)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("a bug in the hand-off")
        await call.done
        return HandOff(f"wf-{record.partition}-{record.offset}", started=True)

    def offsets(self, calls: list[Call] | None = None) -> list[int]:
        return [c.offset for c in (self.calls if calls is None else calls)]

    async def finish(self, calls: Iterable[Call]) -> None:
        for call in calls:
            if not call.done.done():
                call.done.set_result(None)
        await settle()


async def settle() -> None:
    """Let the tasks that can run, run (hand-offs finishing, their callbacks)."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
def hand_offs(monkeypatch: pytest.MonkeyPatch) -> FakeHandOffs:
    fake = FakeHandOffs()
    monkeypatch.setattr(per_record_module, "hand_off", fake)
    return fake


def make_ingest(owned: set[TopicPartition], max_in_flight: int = 16) -> tuple[Ingest, FakeConsumer]:
    ingest = Ingest(make_config(max_in_flight), client=None)  # type: ignore[arg-type]
    fake = FakeConsumer(owned)
    ingest._consumer = fake
    ingest._topic_ids = FakeTopicIds({TOPIC: TOPIC_ID})  # type: ignore[assignment]
    ingest._checked = dict.fromkeys(owned, TOPIC_ID)  # positions checked, as after a first poll
    return ingest, fake


def buffer(ingest: Ingest, tp: TopicPartition, offsets: Iterable[int]) -> None:
    ingest._buffers.setdefault(tp, collections.deque()).extend(records(tp, offsets))


async def cleanup(ingest: Ingest, hand_offs: FakeHandOffs) -> None:
    """Finish whatever is still waiting, so no task outlives the test."""
    await hand_offs.finish(hand_offs.calls)
    assert not ingest.hand_offs.tasks


async def test_revoke_drops_buffered_records(hand_offs: FakeHandOffs) -> None:
    ingest, fake = make_ingest({TP, OTHER})
    buffer(ingest, TP, range(5))

    await asyncio.wait_for(ingest.on_revoked({TP}), 1)
    fake.owned = {OTHER}
    ingest._dispatch()
    await settle()

    assert hand_offs.calls == []
    assert ingest.hand_offs.in_flight == 0 and ingest.tracker.in_flight() == 0
    assert not ingest._buffers.get(TP)
    assert fake.commits == []  # nothing of TP was handed off: nothing to commit

    # A partition still owned is dispatched as before.
    buffer(ingest, OTHER, range(3))
    ingest._dispatch()
    await settle()
    assert [(c.record.partition, c.offset) for c in hand_offs.calls] == [(1, 0), (1, 1), (1, 2)]
    await cleanup(ingest, hand_offs)
    assert ingest.hand_offs.in_flight == 0
    await ingest.commit()
    assert fake.commits == [{OTHER: 3}]


async def test_revoke_with_hand_offs_in_flight_then_reassign_from_the_committed_offset(
    hand_offs: FakeHandOffs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consumer_module, "DRAIN_TIMEOUT_S", 0.2)
    ingest, fake = make_ingest({TP})
    buffer(ingest, TP, range(4))
    ingest._dispatch()
    await settle()
    await hand_offs.finish(hand_offs.calls[:1])  # offset 0 is handed off, 1-3 are not
    assert ingest.hand_offs.in_flight == 3

    # Temporal is slow: the revoke gives up waiting, commits only the safe point (1).
    with caplog.at_level(logging.WARNING, logger="courier.ingest"):
        await asyncio.wait_for(ingest.on_revoked({TP}), 2)
    assert fake.commits == [{TP: 1}]
    assert "3 hand-offs of revoked partitions unfinished" in caplog.text
    old = [c for c in hand_offs.calls if not c.done.done()]
    assert [c.offset for c in old] == [1, 2, 3]

    # The partition comes back and is read again from its committed offset, 1.
    fake.batches.append({TP: records(TP, range(1, 6))})
    await ingest._poll_once(fake)
    await settle()
    new = hand_offs.calls[len(hand_offs.calls) - 5 :]
    assert hand_offs.offsets(new) == [1, 2, 3, 4, 5]
    assert ingest.hand_offs.in_flight == 8  # the old hand-offs still hold their slots
    assert ingest.tracker.in_flight({TP}) == 5

    # The old hand-offs finishing must not mark the new epoch's offsets as handed off.
    await hand_offs.finish(old)
    assert ingest.hand_offs.in_flight == 5
    assert ingest.tracker.in_flight({TP}) == 5
    assert ingest.tracker.commit_point(TP) == 1
    await ingest.commit()
    assert all(c == {TP: 1} for c in fake.commits)  # not past offset 1 (re-read, in flight)

    await hand_offs.finish(new[1:])
    assert ingest.tracker.commit_point(TP) == 1  # offset 1 (new epoch) still in flight
    await hand_offs.finish(new[:1])
    assert ingest.hand_offs.in_flight == 0 and not ingest.hand_offs.tasks
    await ingest.commit()
    assert fake.commits[-1] == {TP: 6}


async def test_revoke_waits_for_hand_offs_that_finish_in_time(hand_offs: FakeHandOffs) -> None:
    ingest, fake = make_ingest({TP})
    buffer(ingest, TP, range(3))
    ingest._dispatch()
    await settle()

    revoke = asyncio.create_task(ingest.on_revoked({TP}))
    await asyncio.sleep(0.1)
    assert not revoke.done()  # waiting for the hand-offs in flight
    await hand_offs.finish(hand_offs.calls)
    await asyncio.wait_for(revoke, 1)

    assert fake.commits == [{TP: 3}]
    assert ingest.hand_offs.in_flight == 0 and ingest.tracker.in_flight() == 0


async def test_full_window_pauses_the_partition_until_its_buffer_is_empty(
    hand_offs: FakeHandOffs,
) -> None:
    ingest, fake = make_ingest({TP}, max_in_flight=2)
    fake.batches.append({TP: records(TP, range(5))})

    await ingest._poll_once(fake)
    await settle()
    assert hand_offs.offsets() == [0, 1]
    assert ingest.hand_offs.in_flight == 2 and len(ingest._buffers[TP]) == 3
    assert fake.paused() == {TP}

    # Window full: the loop still polls (stays in its group), within the poll timeout.
    loop = asyncio.get_running_loop()
    started = loop.time()
    await ingest._poll_once(fake)
    assert loop.time() - started < 0.5
    assert fake.poll_timeouts[-1] == 0
    assert hand_offs.offsets() == [0, 1] and fake.paused() == {TP}

    # A slot freed wakes the waiting poll at once, and the next record starts.
    poll = asyncio.create_task(ingest._poll_once(fake))
    await settle()
    started = loop.time()
    await hand_offs.finish(hand_offs.calls[:1])
    await asyncio.wait_for(poll, 1)
    assert loop.time() - started < 0.15
    await settle()
    assert hand_offs.offsets() == [0, 1, 2] and ingest.hand_offs.in_flight == 2
    assert fake.paused() == {TP}

    await hand_offs.finish(hand_offs.calls[1:3])
    await ingest._poll_once(fake)
    await settle()
    assert hand_offs.offsets() == [0, 1, 2, 3, 4]
    assert not ingest._buffers[TP]
    assert fake.paused() == set()  # buffer empty: fetching resumes

    await hand_offs.finish(hand_offs.calls)
    assert ingest.hand_offs.in_flight == 0
    await ingest.commit()
    assert fake.commits == [{TP: 5}]


class _AsyncioWithoutSleep:
    """``asyncio`` as ``ingest.per_record`` sees it, with sleeps noted instead of waited."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)


async def test_unexpected_hand_off_error_is_logged_retried_and_committed_past(
    hand_offs: FakeHandOffs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_asyncio = _AsyncioWithoutSleep()
    monkeypatch.setattr(per_record_module, "asyncio", fake_asyncio)
    hand_offs.failures = 1
    ingest, fake = make_ingest({TP})
    buffer(ingest, TP, [7])

    with caplog.at_level(logging.ERROR, logger="courier.ingest"):
        ingest._dispatch()
        await settle()
        assert len(hand_offs.calls) == 2  # failed once, retried
        await hand_offs.finish(hand_offs.calls)

    [logged] = [r for r in caplog.records if r.name == "courier.ingest"]
    assert logged.getMessage() == "hand-off of orders/0/7 failed; retrying"
    assert logged.exc_info is not None and "a bug in the hand-off" in str(logged.exc_info[1])
    assert fake_asyncio.slept == [1.0]
    assert ingest.counts["started"] == 1
    assert ingest.hand_offs.in_flight == 0 and ingest.tracker.in_flight() == 0
    await ingest.commit()
    assert fake.commits == [{TP: 8}]


async def test_recreated_topic_restarts_from_the_committed_offset(
    hand_offs: FakeHandOffs,
) -> None:
    ingest, fake = make_ingest({TP})
    fake.batches.append({TP: records(TP, range(3))})
    await ingest._poll_once(fake)
    await settle()
    old = list(hand_offs.calls)
    assert hand_offs.offsets(old) == [0, 1, 2]

    # The topic is deleted and created again: a new ID, and the group's offsets are gone.
    ingest._topic_ids = FakeTopicIds({TOPIC: "AAAAAAAAAAAAAAAAAAAAAA"})  # type: ignore[assignment]
    fake.batches.append({TP: records(TP, [3])})
    await ingest._poll_once(fake)
    await settle()
    assert fake.seeks == [(TP, None)]  # from the beginning
    assert hand_offs.offsets() == [0, 1, 2]  # the record of the old topic is dropped
    assert ingest.tracker.in_flight() == 0

    fake.batches.append({TP: records(TP, range(2))})
    await ingest._poll_once(fake)
    await settle()
    new = hand_offs.calls[3:]
    assert hand_offs.offsets(new) == [0, 1]
    assert all(c.record.offset == o for c, o in zip(new, [0, 1], strict=True))
    await hand_offs.finish(old)  # the old topic's hand-offs finish late
    assert ingest.tracker.commit_point(TP) == 0
    await hand_offs.finish(new)
    assert ingest.hand_offs.in_flight == 0
    await ingest.commit()
    assert fake.commits == [{TP: 2}]


async def test_commits_carry_the_topic_id(hand_offs: FakeHandOffs) -> None:
    ingest, fake = make_ingest({TP})
    buffer(ingest, TP, range(2))
    ingest._dispatch()
    await settle()
    await hand_offs.finish(hand_offs.calls)
    await ingest.commit()
    assert fake.commits == [{TP: 2}]
    assert fake.committed_metadata == {TP: f"topic-id={TOPIC_ID}"}


async def test_an_offset_committed_for_an_earlier_topic_of_the_name_is_passed_over(
    hand_offs: FakeHandOffs,
) -> None:
    """The consumer was positioned at offset 50, committed under another topic ID."""
    ingest, fake = make_ingest({TP})
    ingest._checked = {}  # a fresh assignment: nothing checked yet
    fake.committed_offsets[TP] = 50
    fake.committed_metadata[TP] = "topic-id=AAAAAAAAAAAAAAAAAAAAAA"
    fake.batches.append({TP: records(TP, [50, 51])})
    await ingest._poll_once(fake)
    await settle()
    assert fake.seeks == [(TP, None)]  # from the beginning
    assert hand_offs.calls == []  # the records read from offset 50 are dropped

    fake.batches.append({TP: records(TP, range(3))})
    await ingest._poll_once(fake)
    await settle()
    await hand_offs.finish(hand_offs.calls)
    assert hand_offs.offsets() == [0, 1, 2]
    await ingest.commit()
    assert fake.commits == [{TP: 3}]
    assert fake.committed_metadata == {TP: f"topic-id={TOPIC_ID}"}


async def test_an_offset_committed_under_the_topics_own_id_or_none_is_kept(
    hand_offs: FakeHandOffs,
) -> None:
    for metadata in (f"topic-id={TOPIC_ID}", ""):
        ingest, fake = make_ingest({TP})
        ingest._checked = {}
        fake.committed_offsets[TP] = 50
        fake.committed_metadata[TP] = metadata
        fake.batches.append({TP: records(TP, [50, 51])})
        await ingest._poll_once(fake)
        await settle()
        assert fake.seeks == []
        assert hand_offs.offsets()[-2:] == [50, 51]
        await hand_offs.finish(hand_offs.calls)


async def test_no_commit_for_a_topic_recreated_before_a_revoke(hand_offs: FakeHandOffs) -> None:
    ingest, fake = make_ingest({TP})
    buffer(ingest, TP, range(3))
    ingest._dispatch()
    await settle()
    await hand_offs.finish(hand_offs.calls)
    ingest._topic_ids = FakeTopicIds({TOPIC: "AAAAAAAAAAAAAAAAAAAAAA"})  # type: ignore[assignment]
    await asyncio.wait_for(ingest.on_revoked({TP}), 1)
    assert fake.commits == []


async def test_an_idle_partition_commits_past_the_control_records_after_its_last_record(
    hand_offs: FakeHandOffs,
) -> None:
    """Offsets 0-4 are records, 5 a transaction marker: the consumer's position is 6."""
    ingest, fake = make_ingest({TP})
    buffer(ingest, TP, range(5))
    ingest._dispatch()
    await settle()
    fake.positions[TP] = 6
    await ingest.commit()
    assert fake.commits == [{TP: 0}]  # hand-offs in flight: not past the first
    await hand_offs.finish(hand_offs.calls[:4])
    await ingest.commit()
    assert fake.commits[-1] == {TP: 4}  # offset 4 still in flight: not past it
    await hand_offs.finish(hand_offs.calls)
    await ingest.commit()
    assert fake.commits[-1] == {TP: 6}
