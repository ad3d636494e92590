"""The pacer spaces records at its rate, burst one, and gives up at a deadline."""

import asyncio
import itertools
import time

from activities.pacing import Pacer


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
