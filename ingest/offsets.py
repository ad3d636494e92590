"""Offset tracking: which offsets are safe to commit.

A partition's offsets are handed off concurrently and may finish out of order. The commit
point of a partition is the lowest offset still in flight, or one past the last offset read
when none is in flight; so a commit never passes an offset that has not been handed off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition


@dataclass
class _Partition:
    # Offsets in flight, in the order read; dicts keep insertion order, so the first key is
    # the lowest offset in flight and removal is O(1).
    in_flight: dict[int, None] = field(default_factory=dict)
    next_offset: int | None = None
    committed: int | None = None


class OffsetTracker:
    """Tracks in-flight hand-offs per partition and yields only safe commit points."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _Partition] = {}

    def begin(self, tp: TopicPartition, offset: int) -> None:
        """Record that ``offset`` was read and its hand-off started (offsets arrive in order)."""
        part = self._partitions.setdefault(tp, _Partition())
        if part.next_offset is not None and offset < part.next_offset:
            raise ValueError(f"{tp}: offset {offset} read after {part.next_offset - 1}")
        part.in_flight[offset] = None
        part.next_offset = offset + 1

    def next_offset(self, tp: TopicPartition) -> int | None:
        """One past the last offset begun on ``tp``, or None if none was."""
        part = self._partitions.get(tp)
        return None if part is None else part.next_offset

    def finish(self, tp: TopicPartition, offset: int) -> None:
        """Record that ``offset`` has been handed off (its workflow started or already existed)."""
        part = self._partitions.get(tp)
        if part is not None:
            part.in_flight.pop(offset, None)

    def advance(self, tp: TopicPartition, offset: int) -> None:
        """Nothing of ``tp`` before ``offset`` is left to hand off (the offsets between are
        control records): its commit point may move there once nothing is in flight."""
        part = self._partitions.get(tp)
        if part is not None and not part.in_flight and (part.next_offset or 0) < offset:
            part.next_offset = offset

    def commit_point(self, tp: TopicPartition) -> int | None:
        """The offset to commit for ``tp`` (the next one to read), or None if nothing is safe."""
        part = self._partitions.get(tp)
        if part is None or part.next_offset is None:
            return None
        return next(iter(part.in_flight), part.next_offset)

    def committable(self) -> dict[TopicPartition, int]:
        """Commit points that moved past what was last committed."""
        result = {}
        for tp, part in self._partitions.items():
            point = self.commit_point(tp)
            if point is not None and (part.committed is None or point > part.committed):
                result[tp] = point
        return result

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Remember what was committed, so it is not committed again."""
        for tp, offset in offsets.items():
            if tp in self._partitions:
                self._partitions[tp].committed = offset

    def in_flight(self, partitions: set[TopicPartition] | None = None) -> int:
        """How many hand-offs are in flight, over all partitions or the given ones."""
        return sum(
            len(part.in_flight)
            for tp, part in self._partitions.items()
            if partitions is None or tp in partitions
        )

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop state of partitions this consumer no longer owns."""
        for tp in partitions:
            self._partitions.pop(tp, None)
