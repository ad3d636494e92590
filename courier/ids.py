"""The one function that names a record's workflow, and so its identity everywhere."""

from __future__ import annotations

import hashlib

WORKFLOW_ID_PREFIX = "courier"


def workflow_id(*, group: str, topic: str, topic_id: str, partition: int, offset: int) -> str:
    """The workflow ID of a record: ``courier/<group>/<topic>@<topic ID>/<partition>/<offset>``.

    The topic ID (Kafka's topic UUID) is the identity: a topic deleted and created again under
    the same name gets a new ID and restarts its offsets at 0, so its records never collide
    with the old ones. The name is there for people. The ID is also the record's idempotency
    key at every destination.
    """
    return f"{WORKFLOW_ID_PREFIX}/{group}/{topic}@{topic_id}/{partition}/{offset}"


def range_workflow_id(*, group: str, topic: str, topic_id: str, partition: int, first: int) -> str:
    """The workflow ID of a batch-mode range, from its first offset: ``…/<first>/range``.

    Each record of the range keeps its own identity (:func:`workflow_id`) at the sinks.
    """
    offset_id = workflow_id(
        group=group, topic=topic, topic_id=topic_id, partition=partition, offset=first
    )
    return f"{offset_id}/range"


KEY_TEXT_LIMIT = 200
"""Longest key (in characters) that appears as itself in a key workflow's ID; longer ones and
keys that are not printable UTF-8 appear as their SHA-256."""


def key_workflow_id(*, group: str, destination: str, key: bytes) -> str:
    """The ID of the workflow that exports one key's records to an ordered destination.

    ``courier/<group>/ordered/<destination>/key=<key>`` for a printable UTF-8 key of at most
    :data:`KEY_TEXT_LIMIT` characters, else ``…/key#<SHA-256 of the key, hex>``. Each record
    keeps its own identity (:func:`workflow_id`) as its idempotency key.
    """
    prefix = f"{WORKFLOW_ID_PREFIX}/{group}/ordered/{destination}/key"
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and len(text) <= KEY_TEXT_LIMIT and text.isprintable():
        return f"{prefix}={text}"
    return f"{prefix}#{hashlib.sha256(key).hexdigest()}"


def parse_workflow_id(record_id: str) -> tuple[str, str, str, int, int] | None:
    """``(group, topic, topic ID, partition, offset)`` of a :func:`workflow_id`, else None."""
    head, sep, rest = record_id.partition("/")
    if head != WORKFLOW_ID_PREFIX or not sep:
        return None
    group_and_topic, _, place = rest.rpartition("/")  # place: "<offset>"
    group_and_topic, _, partition = group_and_topic.rpartition("/")
    group, _, topic_with_id = group_and_topic.rpartition("/")
    topic, at, topic_id = topic_with_id.partition("@")
    if not (group and topic and at and partition.isdigit() and place.isdigit()):
        return None
    return group, topic, topic_id, int(partition), int(place)
