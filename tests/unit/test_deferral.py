"""Turns of rate-bound destinations' records, and the start delays they give."""

from __future__ import annotations

from itertools import pairwise

import pytest

from ingest.deferral import TurnSchedule


def schedule() -> TurnSchedule:
    return TurnSchedule(lead_s=10.0, max_delay_s=60.0)


def test_a_destination_no_rate_bounds_is_never_deferred() -> None:
    turns = schedule()
    assert turns.take("api", now=0.0) == 0.0  # never observed
    turns.observe("api", now=0.0, backlog=500, rate=None)
    assert turns.wait("api", now=0.0) is None
    assert [turns.take("api", now=0.0) for _ in range(100)] == [0.0] * 100


def test_records_within_the_lead_start_at_once_and_the_rest_one_turn_apart() -> None:
    turns = schedule()
    turns.observe("slow", now=0.0, backlog=0, rate=5.0)
    delays = [turns.take("slow", now=0.0) for _ in range(100)]
    # Turns at 0.2, 0.4, … s: the first 10 s of them (50 records) are queued at once.
    assert delays[:49] == [0.0] * 49
    assert delays[50] == pytest.approx(0.2)
    assert delays[99] == pytest.approx(10.0)
    assert all(b - a == pytest.approx(0.2) for a, b in pairwise(delays[50:]))


def test_the_backlog_the_server_reports_comes_first() -> None:
    turns = schedule()
    turns.observe("slow", now=0.0, backlog=100, rate=5.0)  # 20 s of exports queued
    assert turns.wait("slow", now=0.0) == pytest.approx(20.0)
    assert turns.take("slow", now=0.0) == pytest.approx(10.0)
    assert turns.take("slow", now=0.0) == pytest.approx(10.2)


def test_no_record_waits_longer_than_the_maximum() -> None:
    turns = schedule()
    turns.observe("down", now=0.0, backlog=300, rate=0.2)  # an operator's limit of one per 5 s
    assert turns.take("down", now=0.0) == 60.0
    assert turns.take("down", now=30.0) == 60.0


def test_a_raised_rate_brings_the_turns_back() -> None:
    turns = schedule()
    turns.observe("api", now=0.0, backlog=300, rate=0.2)  # turns 1,500 s out
    for _ in range(10):
        turns.take("api", now=0.0)
    turns.observe("api", now=5.0, backlog=300, rate=100.0)  # limit raised: 3 s of backlog
    # The 10 deferred records come after the backlog, then this one.
    assert turns.wait("api", now=5.0) == pytest.approx(3.0 + 11 / 100.0)
    assert turns.take("api", now=5.0) == 0.0


def test_deferred_records_that_reached_the_queue_are_counted_by_the_server() -> None:
    turns = schedule()
    turns.observe("slow", now=0.0, backlog=0, rate=1.0)
    for _ in range(30):
        turns.take("slow", now=0.0)  # turns 1..30 s; 11..30 deferred, first tasks at 1..20 s
    # At 25 s the server reports the 5 turns left (26..30) as backlog; none are still deferred.
    turns.observe("slow", now=25.0, backlog=5, rate=1.0)
    assert turns.wait("slow", now=25.0) == pytest.approx(6.0)
