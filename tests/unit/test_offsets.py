"""The offset tracker never lets a commit pass an offset that is not handed off."""

import random

import pytest
from aiokafka import TopicPartition

from ingest.offsets import OffsetTracker

TP = TopicPartition("orders", 0)
OTHER = TopicPartition("orders", 1)


def test_nothing_read_nothing_to_commit() -> None:
    assert OffsetTracker().committable() == {}


def test_out_of_order_completions_hold_the_commit_point_at_the_lowest_in_flight() -> None:
    tracker = OffsetTracker()
    for offset in range(10, 15):
        tracker.begin(TP, offset)
    tracker.finish(TP, 12)
    tracker.finish(TP, 14)
    assert tracker.commit_point(TP) == 10
    tracker.finish(TP, 10)
    assert tracker.commit_point(TP) == 11
    tracker.finish(TP, 11)
    assert tracker.commit_point(TP) == 13
    tracker.finish(TP, 13)
    assert tracker.commit_point(TP) == 15


def test_random_completion_order_never_passes_an_unfinished_offset() -> None:
    rng = random.Random(7)
    tracker = OffsetTracker()
    offsets = list(range(200))
    for offset in offsets:
        tracker.begin(TP, offset)
    rng.shuffle(offsets)
    finished: set[int] = set()
    for offset in offsets:
        tracker.finish(TP, offset)
        finished.add(offset)
        point = tracker.commit_point(TP)
        assert point is not None
        assert all(o in finished for o in range(point)), "commit point passed an unfinished offset"
        assert point == next(o for o in range(201) if o not in finished)


def test_gaps_in_offsets_are_fine() -> None:
    tracker = OffsetTracker()
    for offset in (3, 7, 20):
        tracker.begin(TP, offset)
    for offset in (20, 3, 7):
        tracker.finish(TP, offset)
    assert tracker.commit_point(TP) == 21


def test_committable_reports_only_progress_and_per_partition() -> None:
    tracker = OffsetTracker()
    tracker.begin(TP, 0)
    tracker.begin(OTHER, 5)
    tracker.finish(TP, 0)
    assert tracker.committable() == {TP: 1, OTHER: 5}
    tracker.mark_committed({TP: 1, OTHER: 5})
    assert tracker.committable() == {}
    tracker.finish(OTHER, 5)
    assert tracker.committable() == {OTHER: 6}


def test_in_flight_counts_and_forget() -> None:
    tracker = OffsetTracker()
    tracker.begin(TP, 0)
    tracker.begin(OTHER, 0)
    assert tracker.in_flight() == 2
    assert tracker.in_flight({TP}) == 1
    tracker.forget({TP})
    assert tracker.commit_point(TP) is None
    assert tracker.in_flight() == 1


def test_offsets_must_arrive_in_order() -> None:
    tracker = OffsetTracker()
    tracker.begin(TP, 5)
    with pytest.raises(ValueError, match="offset 4 read after 5"):
        tracker.begin(TP, 4)
