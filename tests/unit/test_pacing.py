"""The pacer spaces records at its rate, burst one, and gives up at a deadline; while it
paces, a batch worker holds only a couple of activities."""

import asyncio
import bisect
import contextlib
import itertools
import random
import threading
import time
from typing import cast

import pytest
from temporalio.worker import SlotReserveContext

from activities import pacing
from activities.pacing import CATCH_UP, SLOT_RECHECK_S, PacedSlots, Pacer


async def test_no_rate_never_waits() -> None:
    pacer = Pacer()
    started = time.monotonic()
    assert await pacer.wait(1000)
    assert time.monotonic() - started < 0.1


async def test_records_are_spaced_at_the_rate() -> None:
    pacer = Pacer()
    pacer.set_rate(50)
    sent: list[float] = []
    for _ in range(6):
        assert await pacer.wait()
        sent.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    # 20 ms apart; a late timer lets the next one go at most CATCH_UP of that sooner; generous
    # upper bound for a busy machine.
    assert min(gaps) >= 0.02 * (1 - CATCH_UP) - 0.001 and sum(gaps) < 1.0, gaps


async def test_a_count_takes_as_long_as_its_records() -> None:
    pacer = Pacer()
    pacer.set_rate(40)
    started = time.monotonic()
    assert await pacer.wait(5)  # the first at once, four more about 25 ms apart
    assert 0.08 <= time.monotonic() - started < 1.0


class _LateTimers:
    """A virtual clock whose timers fire late, 0–20 % of ``interval`` (seeded), as on a busy
    event loop; stands in for ``asyncio`` inside ``activities.pacing``."""

    def __init__(self, interval: float) -> None:
        self.now = 1000.0
        self.interval = interval
        self.random = random.Random(7)
        self.Lock = asyncio.Lock

    def get_running_loop(self) -> "_LateTimers":
        return self

    def time(self) -> float:
        return self.now

    def timeout_at(self, when: float | None) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    async def sleep(self, delay: float) -> None:
        self.now += delay + self.random.uniform(0, 0.2) * self.interval
        await asyncio.sleep(0)


def _busiest_second(times: list[float]) -> int:
    return max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))


@pytest.mark.parametrize("rate,exporters", [(50.0, 1), (50.0, 2), (4.6, 2)])
async def test_late_timers_neither_slow_the_pace_nor_crowd_a_second(
    monkeypatch: pytest.MonkeyPatch, rate: float, exporters: int
) -> None:
    # A pacer that slept one interval after each record ran 5 % under 50/s on an idle loop,
    # and far under it on a busy one: every late timer was lost.
    clock = _LateTimers(1 / rate)
    monkeypatch.setattr(pacing, "asyncio", clock)
    pacer = Pacer()
    pacer.set_rate(rate)
    sent: list[float] = []

    async def export(records: int) -> None:
        for _ in range(records):
            assert await pacer.wait()
            sent.append(clock.now)

    records = int(rate * 20)
    await asyncio.gather(*(export(records // exporters) for _ in range(exporters)))
    sent.sort()
    assert (len(sent) - 1) / (sent[-1] - sent[0]) >= rate * 0.99
    assert _busiest_second(sent) <= rate + 1


async def test_until_ends_the_wait_and_says_the_pace_was_not_kept() -> None:
    pacer = Pacer()
    pacer.set_rate(1)
    until = asyncio.get_running_loop().time() + 0.2
    started = time.monotonic()
    assert not await pacer.wait(5, until=until)
    assert 0.15 <= time.monotonic() - started < 1.0


async def test_a_new_rate_applies_to_the_next_record() -> None:
    pacer = Pacer()
    pacer.set_rate(0.1)
    assert await pacer.wait()  # the first goes at once
    pacer.set_rate(None)
    started = time.monotonic()
    assert await pacer.wait(3)
    assert time.monotonic() - started < 0.1


def _reserve_context() -> SlotReserveContext:
    return cast(SlotReserveContext, object())  # PacedSlots does not read it


async def test_pacing_holds_only_the_paced_slots() -> None:
    pacer = Pacer()
    slots = PacedSlots(pacer, slots=4, paced_slots=2)
    ctx = _reserve_context()
    assert [slots.try_reserve_slot(ctx) is not None for _ in range(5)] == [True] * 4 + [False]
    for _ in range(4):
        slots.release_slot(None)  # type: ignore[arg-type]
    pacer.set_rate(5)
    assert [slots.try_reserve_slot(ctx) is not None for _ in range(3)] == [True, True, False]


async def _waiting_reservation(slots: int) -> tuple[PacedSlots, Pacer, asyncio.Task[object]]:
    """A pacing worker's slots, all taken: a reservation waiting for one."""
    pacer = Pacer()
    pacer.set_rate(5)
    supplier = PacedSlots(pacer, slots=slots, paced_slots=1)
    await supplier.reserve_slot(_reserve_context())
    waiting = asyncio.create_task(supplier.reserve_slot(_reserve_context()))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    return supplier, pacer, waiting


async def test_a_reservation_waits_for_a_slot_released_from_another_thread() -> None:
    supplier, _, waiting = await _waiting_reservation(slots=4)
    threading.Thread(target=supplier.release_slot, args=(None,)).start()
    await asyncio.wait_for(waiting, 0.5)  # woken at once, not at the next recheck


async def test_a_reservation_gets_a_slot_when_pacing_stops() -> None:
    _, pacer, waiting = await _waiting_reservation(slots=2)
    pacer.set_rate(None)
    await asyncio.wait_for(waiting, SLOT_RECHECK_S + 1)


async def test_after_idle_time_the_second_record_waits_a_whole_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No head start from idle time: a first request that takes longer (a new connection)
    must not arrive together with the second."""
    clock = _LateTimers(0.05)
    clock.random = random.Random(0)
    monkeypatch.setattr(clock.random, "uniform", lambda low, high: 0.0)  # timers on time
    monkeypatch.setattr(pacing, "asyncio", clock)
    pacer = Pacer()
    pacer.set_rate(20)
    sent: list[float] = []
    for _ in range(3):
        assert await pacer.wait()
        sent.append(clock.now)
    clock.now += 10.0  # idle
    for _ in range(2):
        assert await pacer.wait()
        sent.append(clock.now)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(sent)]
    assert gaps[:2] == [0.05, 0.05] and gaps[3] == 0.05
