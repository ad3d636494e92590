"""Commits belong to an incarnation: an offset is committed with the topic ID it was read from.

A topic deleted and created again under the same name is another topic whose offsets restart
at 0, but Kafka keys a group's committed offsets by topic *name*. An offset committed for the
old topic (say 50) and read back for the new one would skip the new topic's first 50 records.
So every commit carries its topic's ID in the offset's metadata (``topic-id=<ID>``), and before
a partition's records are handed off, the committed offset it was positioned at is checked: one
committed under another topic ID belongs to an earlier incarnation, and the partition is read
from the beginning instead. Offsets committed without an ID (by earlier versions, or by other
tools) are taken as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

METADATA_PREFIX = "topic-id="
FETCH_TIMEOUT_S = 5.0
"""The longest a look-up of committed offsets may take (aiokafka retries it without end)."""


def commit_metadata(topic_id: str) -> str:
    """The metadata committed with an offset of the topic whose ID is ``topic_id``."""
    return f"{METADATA_PREFIX}{topic_id}"


def committed_topic_id(metadata: str | None) -> str | None:
    """The topic ID a committed offset's metadata names; None if it names none."""
    if metadata and metadata.startswith(METADATA_PREFIX):
        return metadata[len(METADATA_PREFIX) :]
    return None


@dataclass(frozen=True)
class Committed:
    """A partition's committed offset and the topic ID it was committed under (if known)."""

    offset: int
    topic_id: str | None

    def belongs_to(self, topic_id: str) -> bool:
        """Whether this offset may be used for the topic whose ID is ``topic_id``."""
        return self.topic_id is None or self.topic_id == topic_id


async def fetch_committed(
    consumer: Any, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, Committed]:
    """The group's committed offsets of ``partitions`` (those with none are left out).

    Raises ``TimeoutError`` after :data:`FETCH_TIMEOUT_S` and aiokafka's errors as they come.
    """
    wanted = list(partitions)
    if not wanted:
        return {}
    # aiokafka's public committed() drops the metadata; its coordinator returns it.
    async with asyncio.timeout(FETCH_TIMEOUT_S):
        found = await consumer._coordinator.fetch_committed_offsets(wanted)
    return {
        tp: Committed(meta.offset, committed_topic_id(meta.metadata))
        for tp, meta in found.items()
        if meta.offset >= 0
    }
