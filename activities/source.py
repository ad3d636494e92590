"""Where workers read records handed off by reference: Kafka itself is the claim check.

The worker process owns one :class:`RecordSource` (``ingest.fetch.KafkaRecordSource``) and
gives it to the export activities, which depend only on this protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from workflows.types import KafkaRecord


@dataclass(frozen=True)
class Fetched:
    """Records read back by offset; offsets missing from ``records`` are gone for ``missing``."""

    records: dict[int, KafkaRecord]
    missing: str
    """Why an absent offset is absent, e.g. "no longer in Kafka (retention: …)"."""
    log_start: int | None = None
    """The partition's first offset when it was read (None: the topic is gone)."""

    def compacted(self, offset: int) -> bool:
        """Whether an absent ``offset`` was compacted away, not deleted by retention: it is at
        or past the log's start, so a later record of its key replaced it."""
        return (
            self.log_start is not None and offset >= self.log_start and offset not in self.records
        )


class RecordSource(Protocol):
    """Reads records of one partition back from Kafka by offset."""

    async def fetch(
        self, *, topic: str, topic_id: str, partition: int, offsets: Sequence[int]
    ) -> Fetched:
        """The records at ``offsets`` of that partition, if the topic still has that ID."""
        ...
