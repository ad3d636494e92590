"""Consumer lag: its arithmetic (``ingest.lag``) and the loop measuring it, on a fake consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import REGISTRY

from ingest.consumer import Ingest
from ingest.lag import Lag, LagMeter, partition_lag
from tests.unit.test_ingest_loop import (
    OTHER,
    TP,
    FakeConsumer,
    FakeHandOffs,
    hand_offs,  # noqa: F401  (a fixture)
    make_ingest,
    settle,
)

NOW = 1_800_000_000.0
CLOCK = 2.0
"""Seconds a measurement may come after the records were made (a loaded machine)."""


def stamped(
    tp: TopicPartition, offsets: Iterable[int], ages_s: Iterable[float], now: float | None = None
) -> list[ConsumerRecord]:
    """Records of ``tp`` whose timestamps are ``ages_s`` seconds before ``now`` (default: now)."""
    at = time.time() if now is None else now
    return [
        ConsumerRecord(
            tp.topic, tp.partition, o, int((at - age) * 1000), 0, b"k", b"{}", None, 1, 2, []
        )
        for o, age in zip(offsets, ages_s, strict=True)
    ]


def about(seconds: float) -> Any:
    """``seconds``, measured a little later."""
    return pytest.approx(seconds + CLOCK / 2, abs=CLOCK / 2)


def sample(name: str, tp: TopicPartition) -> float | None:
    return REGISTRY.get_sample_value(name, {"topic": tp.topic, "partition": str(tp.partition)})


# --- the arithmetic ---------------------------------------------------------------------------


def test_no_lag_is_zero_records_and_zero_seconds() -> None:
    lag = partition_lag(end=10, handed_off=10, oldest_waiting_ms=1, last_handed_off_ms=1, now=NOW)
    assert lag == Lag(0, 0.0)


def test_a_handed_off_point_past_the_end_is_no_lag() -> None:
    # The commit point passed control records the end offsets answer did not count yet.
    assert partition_lag(
        end=10, handed_off=11, oldest_waiting_ms=None, last_handed_off_ms=None, now=NOW
    ) == Lag(0, 0.0)


def test_seconds_come_from_the_oldest_record_waiting() -> None:
    lag = partition_lag(
        end=110,
        handed_off=100,
        oldest_waiting_ms=int((NOW - 42) * 1000),
        last_handed_off_ms=int((NOW - 500) * 1000),
        now=NOW,
    )
    assert lag.records == 10 and lag.seconds == pytest.approx(42)


def test_without_a_record_waiting_seconds_come_from_the_last_handed_off() -> None:
    lag = partition_lag(
        end=3,
        handed_off=1,
        oldest_waiting_ms=None,
        last_handed_off_ms=int((NOW - 7.5) * 1000),
        now=NOW,
    )
    assert lag.records == 2 and lag.seconds == pytest.approx(7.5)


def test_unknown_or_missing_timestamps_leave_the_seconds_unknown() -> None:
    lag = partition_lag(end=5, handed_off=0, oldest_waiting_ms=-1, last_handed_off_ms=None, now=NOW)
    assert lag == Lag(5, None)


def test_a_producer_clock_ahead_reads_as_zero_seconds() -> None:
    lag = partition_lag(
        end=5,
        handed_off=4,
        oldest_waiting_ms=int((NOW + 30) * 1000),
        last_handed_off_ms=None,
        now=NOW,
    )
    assert lag == Lag(1, 0.0)


def test_the_meter_forgets_what_is_handed_off_and_a_new_epoch() -> None:
    meter = LagMeter()
    meter.read(TP, stamped(TP, range(5), [50, 40, 30, 20, 10], NOW), epoch=0, handed_off=None)
    assert meter.first_waiting(TP, 0) == 0
    lag = meter.measure(TP, end=8, handed_off=2, epoch=0, now=NOW)
    assert lag.records == 6 and lag.seconds == pytest.approx(30)
    lag = meter.measure(TP, end=8, handed_off=5, epoch=0, now=NOW)  # 5..7 not read yet
    assert lag.records == 3 and lag.seconds == pytest.approx(10)  # the last handed off
    # Read anew (a rewind, a revoke): nothing of the earlier reading counts.
    assert meter.first_waiting(TP, 1) is None
    assert meter.measure(TP, end=8, handed_off=0, epoch=1, now=NOW) == Lag(8, None)


def test_series_of_partitions_no_longer_owned_are_removed() -> None:
    meter = LagMeter()
    meter.show({TP: Lag(3, 1.5), OTHER: Lag(0, 0.0)}, {TP, OTHER})
    assert sample("courier_consumer_lag_records", TP) == 3
    assert sample("courier_consumer_lag_seconds", TP) == 1.5
    assert sample("courier_consumer_lag_records", OTHER) == 0
    meter.show({TP: Lag(4, None)}, {TP})  # OTHER revoked; TP's seconds unknown this time
    assert sample("courier_consumer_lag_records", OTHER) is None
    assert sample("courier_consumer_lag_seconds", OTHER) is None
    assert sample("courier_consumer_lag_records", TP) == 4
    assert sample("courier_consumer_lag_seconds", TP) == 1.5  # kept, not zeroed
    meter.forget_all()
    assert sample("courier_consumer_lag_records", TP) is None


# --- the loop's measurements --------------------------------------------------------------------


class EndsConsumer(FakeConsumer):
    """A fake consumer that also answers end offsets (or fails to, like a Kafka timeout)."""

    def __init__(self, owned: set[TopicPartition]) -> None:
        super().__init__(owned)
        self.ends: dict[TopicPartition, int] = {}
        self.fetched_lso: dict[TopicPartition, int] = {}
        self.fail = False

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.fail:
            raise KafkaTimeoutError()
        return {tp: self.ends[tp] for tp in partitions if tp in self.ends}

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.fetched_lso.get(tp)


def ends_ingest() -> tuple[Ingest, EndsConsumer]:
    ingest, _ = make_ingest({TP})
    fake = EndsConsumer({TP})
    ingest._consumer = fake
    return ingest, fake


async def test_lag_follows_reading_and_hand_offs(hand_offs: FakeHandOffs) -> None:  # noqa: F811
    ingest, fake = ends_ingest()
    fake.ends[TP] = 10
    fake.positions[TP] = 0
    # Nothing read yet: from the consumer's position; how old the records are is not known.
    assert await ingest.measure_lag() == {TP: Lag(10, None)}

    fake.batches.append({TP: stamped(TP, range(5), [60, 50, 40, 30, 20])})
    await ingest._poll_once(fake)  # all five begun, none handed off yet
    await settle()
    lags = await ingest.measure_lag()
    assert lags[TP].records == 10 and lags[TP].seconds == about(60)

    await hand_offs.finish(hand_offs.calls[:2])
    lags = await ingest.measure_lag()
    assert lags[TP].records == 8 and lags[TP].seconds == about(40)
    assert sample("courier_consumer_lag_records", TP) == 8
    assert sample("courier_consumer_lag_seconds", TP) == lags[TP].seconds

    await hand_offs.finish(hand_offs.calls)  # 5..9 are in Kafka, not read yet
    lags = await ingest.measure_lag()
    assert lags[TP].records == 5 and lags[TP].seconds == about(20)

    fake.ends[TP] = 5
    assert await ingest.measure_lag() == {TP: Lag(0, 0.0)}
    assert sample("courier_consumer_lag_seconds", TP) == 0

    await asyncio.wait_for(ingest.on_revoked({TP}), 2)
    fake.owned = set()
    assert sample("courier_consumer_lag_records", TP) is None
    assert await ingest.measure_lag() == {}


async def test_records_read_but_waiting_for_the_window_count_from_the_first_read(
    hand_offs: FakeHandOffs,  # noqa: F811
) -> None:
    # One hand-off at a time: the rest wait in the buffer, never begun.
    ingest, _ = make_ingest({TP}, max_in_flight=1)
    fake = EndsConsumer({TP})
    ingest._consumer = fake
    fake.ends[TP] = 3
    fake.batches.append({TP: stamped(TP, range(3), [9, 8, 7])})
    await ingest._poll_once(fake)
    await settle()
    await hand_offs.finish(hand_offs.calls)
    assert ingest.tracker.commit_point(TP) == 1
    lags = await ingest.measure_lag()
    assert lags[TP].records == 2 and lags[TP].seconds == about(8)
    await hand_offs.finish(hand_offs.calls)


async def test_without_end_offsets_the_last_fetch_says_where_the_log_ends(
    hand_offs: FakeHandOffs,  # noqa: F811
) -> None:
    ingest, fake = ends_ingest()
    fake.fail = True
    fake.fetched_lso[TP] = 4
    fake.positions[TP] = 1
    errors = REGISTRY.get_sample_value("courier_collect_errors_total", {"source": "kafka"}) or 0
    assert await ingest.measure_lag() == {TP: Lag(3, None)}
    after = REGISTRY.get_sample_value("courier_collect_errors_total", {"source": "kafka"})
    assert after == errors + 1
    ingest.lag.forget_all()


async def test_a_commit_sets_the_last_commit_time(hand_offs: FakeHandOffs) -> None:  # noqa: F811
    ingest, fake = make_ingest({TP})
    before = time.time()
    fake.batches.append({TP: stamped(TP, range(2), [1, 1])})
    await ingest._poll_once(fake)
    await settle()
    await hand_offs.finish(hand_offs.calls)
    await ingest.commit()
    assert fake.commits == [{TP: 2}]
    committed = REGISTRY.get_sample_value("courier_last_commit_timestamp_seconds")
    assert committed is not None and committed >= before
    # Nothing new to commit: everything handed off is committed, the time moves on.
    await asyncio.sleep(0.01)
    await ingest.commit()
    assert fake.commits == [{TP: 2}]
    again = REGISTRY.get_sample_value("courier_last_commit_timestamp_seconds")
    assert again is not None and again > committed
