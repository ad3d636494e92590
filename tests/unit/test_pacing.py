"""The pacer spaces records at its rate, burst one, and gives up at a deadline; while it
paces, a batch worker holds only a couple of activities."""

import asyncio
import itertools
import threading
import time
from typing import cast

from temporalio.worker import SlotReserveContext

from activities.pacing import SLOT_RECHECK_S, PacedSlots, Pacer


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
    # 20 ms apart (no burst beyond the first); generous upper bound for a busy machine.
    assert min(gaps) >= 0.015 and sum(gaps) < 1.0, gaps


async def test_a_count_takes_as_long_as_its_records() -> None:
    pacer = Pacer()
    pacer.set_rate(40)
    started = time.monotonic()
    assert await pacer.wait(5)  # the first at once, four more 25 ms apart
    assert 0.09 <= time.monotonic() - started < 1.0


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
