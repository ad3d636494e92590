"""Consumer lag of ingest's partitions, in records and in seconds (``courier_consumer_lag_*``).

*Records*: the partition's log end — what Kafka answers for its latest offset under the
consumer's isolation level, so the last stable offset under ``read_committed`` — minus the
lowest offset ingest has not handed off yet. That offset is the offset tracker's commit point
once a record of the partition was begun (``ingest.offsets``: the lowest offset in flight, or
one past the last begun); before that, the first record read and not yet handed off; before
anything was read, the consumer's position (where it reads next).

*Seconds*: 0 when the records are 0. Otherwise now minus the timestamp of the oldest record
read and not yet handed off (the record at the lowest offset above, once it is read); when none
is read yet (records appended since the last fetch, or a start far behind), now minus the
timestamp of the last record handed off — an upper bound, as the records waiting are newer;
when neither is known (nothing read since the partition was assigned) the seconds wait for the
next measurement. Timestamps are the records' own (``CreateTime`` or ``LogAppendTime``, as the
topic says); a producer clock ahead of ingest's reads as 0.

Ingest measures every :data:`LAG_INTERVAL_S` whether records arrive or not, so the lag keeps
rising while hand-offs wait; the series of a partition ingest no longer owns are removed.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord, TopicPartition

from courier.core import metrics

LAG_INTERVAL_S = 5.0
"""How often ingest measures its partitions' lag."""


@dataclass(frozen=True)
class Lag:
    """One partition's lag: records not handed off, and how old they are (None: unknown)."""

    records: int
    seconds: float | None


def partition_lag(
    *,
    end: int,
    handed_off: int,
    oldest_waiting_ms: int | None,
    last_handed_off_ms: int | None,
    now: float,
) -> Lag:
    """The lag of a partition whose log ends at ``end`` (the next offset to be written) and
    whose records before ``handed_off`` are handed off; timestamps in ms, ``now`` in s."""
    records = max(0, end - handed_off)
    if records == 0:
        return Lag(0, 0.0)
    stamp = next(
        (ms for ms in (oldest_waiting_ms, last_handed_off_ms) if ms is not None and ms >= 0), None
    )
    if stamp is None:
        return Lag(records, None)
    return Lag(records, max(0.0, now - stamp / 1000))


@dataclass
class _Waiting:
    """A partition's records read and not known to be handed off, in offset order."""

    epoch: int
    records: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    """(offset, timestamp in ms) of each record read."""
    last_handed_off_ms: int | None = None

    def drop_before(self, offset: int) -> None:
        """Forget records before ``offset``: they are handed off."""
        while self.records and self.records[0][0] < offset:
            self.last_handed_off_ms = self.records.popleft()[1]


class LagMeter:
    """Keeps the timestamps the lag needs and publishes the lag gauges of owned partitions.

    ``epoch`` is the hand-offs' reading of the partition (``HandOffs.epoch``): a partition read
    anew (a restart, a rewind, a revoke) starts with nothing remembered.
    """

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Waiting] = {}
        self._shown: set[TopicPartition] = set()

    def _part(self, tp: TopicPartition, epoch: int) -> _Waiting:
        part = self._parts.get(tp)
        if part is None or part.epoch != epoch:
            part = self._parts[tp] = _Waiting(epoch)
        return part

    def read(
        self,
        tp: TopicPartition,
        records: Iterable[ConsumerRecord],
        *,
        epoch: int,
        handed_off: int | None,
    ) -> None:
        """Note records just fetched; ``handed_off``: the tracker's commit point, if any."""
        part = self._part(tp, epoch)
        if handed_off is not None:
            part.drop_before(handed_off)
        part.records.extend((record.offset, record.timestamp) for record in records)

    def first_waiting(self, tp: TopicPartition, epoch: int) -> int | None:
        """The offset of the first record read in this epoch and still remembered, if any."""
        part = self._parts.get(tp)
        if part is None or part.epoch != epoch or not part.records:
            return None
        return part.records[0][0]

    def measure(
        self, tp: TopicPartition, *, end: int, handed_off: int, epoch: int, now: float
    ) -> Lag:
        """The partition's lag given its log end and the lowest offset not handed off."""
        part = self._part(tp, epoch)
        part.drop_before(handed_off)
        return partition_lag(
            end=end,
            handed_off=handed_off,
            oldest_waiting_ms=part.records[0][1] if part.records else None,
            last_handed_off_ms=part.last_handed_off_ms,
            now=now,
        )

    def show(self, lags: dict[TopicPartition, Lag], owned: set[TopicPartition]) -> None:
        """Set the gauges of ``lags``; remove the series of partitions not in ``owned``."""
        for tp, lag in lags.items():
            labels = (tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG_RECORDS.labels(*labels).set(lag.records)
            if lag.seconds is not None:
                metrics.CONSUMER_LAG_SECONDS.labels(*labels).set(lag.seconds)
            self._shown.add(tp)
        self.forget(self._shown - owned)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop what is kept of ``partitions`` and remove their series (no longer owned)."""
        for tp in set(partitions):
            self._parts.pop(tp, None)
            if tp in self._shown:
                self._shown.discard(tp)
                labels = (tp.topic, str(tp.partition))
                metrics.CONSUMER_LAG_RECORDS.remove(*labels)
                metrics.CONSUMER_LAG_SECONDS.remove(*labels)  # a no-op if never set

    def forget_all(self) -> None:
        """Drop everything and remove every series this meter set (ingest stopped)."""
        self.forget(set(self._parts) | self._shown)
