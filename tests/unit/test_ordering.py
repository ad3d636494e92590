"""Per-key ordering without services: config, IDs, the ordered hand-off, chains, carry-over."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from temporalio.service import RPCError, RPCStatusCode

from courier.config.model import ConfigError, CourierConfig, parse_config
from courier.core.ids import key_workflow_id, parse_workflow_id, workflow_id
from ingest import ordered as ordered_module
from ingest import per_record as per_record_module
from ingest.consumer import Ingest
from ingest.handoff import HandOff
from ingest.ordered import ChainBroken, KeyChains, Ordered, hand_off_ordered
from ingest.routing import Router
from tests.unit.test_handoff import FakeClient, record, unavailable
from tests.unit.test_ingest_loop import (
    TOPIC,
    TOPIC_ID,
    TP,
    FakeConsumer,
    FakeHandOffs,
    FakeTopicIds,
    cleanup,
    settle,
)
from workflows.export_key import INLINE_CARRY_BYTES, RECORD_SIGNAL, carried
from workflows.types import Blob, ExportRecordInput, KafkaRecord, OrderedRecord


def config(ordering: str = "key", mode: str = "per_record") -> CourierConfig:
    return parse_config(
        {
            "kafka": {"topics": [TOPIC], "group": "g"},
            "destinations": [
                {"name": "ordered", "kind": "file", "path": "/x/o", "ordering": ordering},
                {"name": "plain", "kind": "file", "path": "/x/p"},
            ],
            "routes": {"rules": [{"prefix": "p", "destination": "plain"}], "default": "ordered"},
            "ingest": {"mode": mode},
        },
        environ={},
    )


def test_ordering_is_off_unless_asked_for() -> None:
    cfg = config(ordering="none")
    assert [d.ordering for d in cfg.destinations] == ["none", "none"]


def test_batch_mode_with_key_ordering_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        config(mode="batch")
    message = str(err.value).strip()
    assert "\n" not in message
    assert "ingest.mode: batch cannot keep the order of a key" in message
    assert "ordering: key on ordered" in message and "use ingest.mode: per_record" in message


def test_key_workflow_id_is_readable_for_text_keys_and_hashed_otherwise() -> None:
    text = key_workflow_id(group="g", destination="api", key=b"order-17")
    assert text == "courier/g/ordered/api/key=order-17"
    binary = key_workflow_id(group="g", destination="api", key=b"\xff\x00")
    long = key_workflow_id(group="g", destination="api", key=b"x" * 201)
    assert binary.startswith("courier/g/ordered/api/key#") and len(binary) < 120
    assert long.startswith("courier/g/ordered/api/key#")
    assert key_workflow_id(group="g", destination="db", key=b"order-17") != text
    assert key_workflow_id(group="h", destination="api", key=b"order-17") != text


def test_record_ids_parse_back_and_other_ids_do_not() -> None:
    rid = workflow_id(group="g/with/slashes", topic="t.x", topic_id="ID", partition=3, offset=17)
    parsed = parse_workflow_id(rid)
    assert (parsed.group, parsed.topic, parsed.topic_id, parsed.partition, parsed.offset) == (
        "g/with/slashes",
        "t.x",
        "ID",
        3,
        17,
    )
    assert parse_workflow_id(rid + "/range").is_range
    for not_a_record in ("courier/g/ordered/api/key=k", "order-17"):
        with pytest.raises(ValueError):
            parse_workflow_id(not_a_record)


def keyed(tp: TopicPartition, items: Iterable[tuple[int, str]]) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(tp.topic, tp.partition, o, 0, 0, k.encode(), b"{}", None, 1, 2, [])
        for o, k in items
    ]


@pytest.fixture
def ordered_hand_offs(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeHandOffs, FakeHandOffs]:
    ordered, plain = FakeHandOffs(), FakeHandOffs()
    monkeypatch.setattr(ordered_module, "hand_off_ordered", ordered)
    monkeypatch.setattr(per_record_module, "hand_off", plain)
    return ordered, plain


async def test_a_keys_records_are_handed_off_one_after_the_other(
    ordered_hand_offs: tuple[FakeHandOffs, FakeHandOffs],
) -> None:
    ordered, plain = ordered_hand_offs
    ingest = Ingest(config(), client=None)  # type: ignore[arg-type]
    fake = FakeConsumer({TP})
    ingest._consumer = fake  # type: ignore[assignment]
    ingest._topic_ids = FakeTopicIds({TOPIC: TOPIC_ID})  # type: ignore[assignment]
    ingest._checked = {TP: TOPIC_ID}
    batch = keyed(TP, [(0, "a"), (1, "b"), (2, "a"), (3, "p1"), (4, "p1"), (5, "b"), (6, "a")])
    ingest._buffers[TP] = collections.deque(batch)
    ingest._dispatch()
    await settle()
    # Each ordered key's first record goes at once; unordered records all go at once.
    assert ordered.offsets() == [0, 1]
    assert plain.offsets() == [3, 4]
    await ordered.finish([ordered.calls[1]])  # b@1 accepted: b@5 may go, a waits for a@0
    assert ordered.offsets() == [0, 1, 5]
    await plain.finish(plain.calls)
    assert ingest.tracker.commit_point(TP) == 0
    await ordered.finish([ordered.calls[0]])  # a@0 accepted: a@2 goes, then a@6 after it
    assert ordered.offsets() == [0, 1, 5, 2]
    assert ingest.tracker.commit_point(TP) == 2
    await ordered.finish([ordered.calls[3]])
    assert ordered.offsets() == [0, 1, 5, 2, 6]
    await ordered.finish(ordered.calls)
    assert ingest.tracker.commit_point(TP) == 7
    assert isinstance(ingest.strategy, Ordered)
    assert len(ingest.strategy.chains) == 0  # finished chains are forgotten
    await cleanup(ingest, ordered)


async def test_an_abandoned_hand_off_stops_the_later_records_of_its_key() -> None:
    chains = KeyChains()
    first, second = chains.claim(("d", b"k")), chains.claim(("d", b"k"))
    other = chains.claim(("d", b"other"))
    await first.wait()
    await other.wait()
    first.release(False)  # e.g. cancelled at shutdown: never accepted
    with pytest.raises(ChainBroken):
        await asyncio.wait_for(second.wait(), 1)
    second.release(False)
    other.release(True)
    assert len(chains) == 0


def queued(offset: int, value: str) -> OrderedRecord:
    record = KafkaRecord(
        topic="t",
        partition=0,
        offset=offset,
        key=Blob("k"),
        value=Blob(value),
        timestamp_ms=0,
        topic_id="ID",
    )
    return OrderedRecord(f"courier/g/t@ID/0/{offset}", ExportRecordInput(record, destination=None))


def test_a_long_queue_is_carried_over_by_reference_past_the_inline_budget() -> None:
    big = "x" * (INLINE_CARRY_BYTES // 3)
    result = carried([queued(o, big) for o in range(5)])
    assert [i.export.by_reference for i in result] == [False, False, False, True, True]
    assert [i.export.record.value for i in result[3:]] == [None, None]
    assert [i.export.record.key for i in result] == [Blob("k")] * 5
    assert [i.idempotency_key for i in result] == [f"courier/g/t@ID/0/{o}" for o in range(5)]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(ordered_module.asyncio, "sleep", no_sleep)
    return slept


async def test_the_ordered_hand_off_signals_the_keys_workflow_with_the_records_own_id(
    sleeps: list[float],
) -> None:
    cfg = parse_config(
        {
            "kafka": {"topics": ["orders"], "group": "g"},
            "destinations": [
                {"name": "api", "kind": "rest", "url": "http://127.0.0.1:9/x", "ordering": "key"}
            ],
            "routes": {"default": "api"},
        },
        environ={},
    )
    client = FakeClient([unavailable()])
    rec = record(b"o-1")
    result = await hand_off_ordered(
        client,  # type: ignore[arg-type]
        cfg,
        rec,
        TOPIC_ID,
        Router(cfg.routes).route(rec.key),
    )
    assert result == HandOff("courier/g/ordered/api/key=o-1", started=True)
    assert len(client.calls) == 2 and sleeps == [0.5]  # UNAVAILABLE is retried
    call = client.calls[-1]
    assert call["id"] == "courier/g/ordered/api/key=o-1"
    assert call["start_signal"] == RECORD_SIGNAL
    (item,) = call["start_signal_args"]
    assert item.idempotency_key == f"courier/g/orders@{TOPIC_ID}/1/3"
    assert item.export.record.offset == 3 and item.export.destination.name == "api"


async def test_a_record_temporal_refuses_is_signalled_as_a_failure_that_blocks_its_key(
    sleeps: list[float],
) -> None:
    cfg = config()
    client = FakeClient([RPCError("too large", RPCStatusCode.INVALID_ARGUMENT, b"")])
    rec = record(b"o-1")
    result = await hand_off_ordered(
        client,  # type: ignore[arg-type]
        cfg,
        rec,
        TOPIC_ID,
        Router(cfg.routes).route(rec.key),
    )
    assert result.failed_reason == "Temporal refused the record's signal: too large"
    (item,) = client.calls[-1]["start_signal_args"]
    assert item.export.hand_off_failure == result.failed_reason
    assert item.export.record.value is None  # coordinates only
    assert item.idempotency_key == f"courier/g/orders@{TOPIC_ID}/1/3"
