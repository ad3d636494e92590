"""The one function that names a record's workflow, and so its identity everywhere."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

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


REDRIVE_SEGMENT = "redrive"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can name a re-drive (letters, digits, ``._:-``); else ValueError."""
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run ID {run_id!r} is not valid: use letters, digits and . _ : - (at most 64 "
            "characters, starting with a letter or digit)"
        )
    return run_id


def redrive_group(group: str, run_id: str) -> str:
    """The group part of a re-drive's IDs: ``<group>/redrive/<run-id>``."""
    return f"{group}/{REDRIVE_SEGMENT}/{check_run_id(run_id)}"


def redrive_workflow_id(
    *, group: str, run_id: str, topic: str, topic_id: str, partition: int, offset: int
) -> str:
    """A re-driven record's workflow ID: ``courier/<group>/redrive/<run-id>/<topic>@<ID>/<p>/<o>``.

    One run ID names one re-drive: running it again finds these IDs and starts nothing twice.
    The record's own :func:`workflow_id` stays its idempotency key unless the re-drive asks for
    a new one, which is then this ID.
    """
    return workflow_id(
        group=redrive_group(group, run_id),
        topic=topic,
        topic_id=topic_id,
        partition=partition,
        offset=offset,
    )


def redrive_prefix(group: str, run_id: str | None = None) -> str:
    """The start shared by the workflow IDs of one re-drive run (or of all, without a run ID)."""
    base = f"{WORKFLOW_ID_PREFIX}/{group}/{REDRIVE_SEGMENT}/"
    return base if run_id is None else f"{base}{check_run_id(run_id)}/"


@dataclass(frozen=True)
class ParsedId:
    """The parts of a Courier workflow ID."""

    group: str
    topic: str
    topic_id: str
    partition: int
    offset: int
    """The record's offset (a range: its first offset)."""
    is_range: bool = False
    redrive_run: str | None = None
    """The re-drive run that started it, if one did."""


def parse_workflow_id(wid: str) -> ParsedId:
    """Split a record's or range's workflow ID into its parts; ValueError if it is not one."""
    parts = wid.split("/")
    is_range = parts[-1] == "range"
    if is_range:
        parts = parts[:-1]
    try:
        if parts[0] != WORKFLOW_ID_PREFIX or len(parts) < 5:
            raise ValueError
        *group_parts, topic_part, partition, offset = parts[1:]
        topic, _, topic_id = topic_part.rpartition("@")
        if not topic or not group_parts:
            raise ValueError
        run = None
        if len(group_parts) >= 3 and group_parts[-2] == REDRIVE_SEGMENT:
            run = group_parts[-1]
            group_parts = group_parts[:-2]
        return ParsedId(
            group="/".join(group_parts),
            topic=topic,
            topic_id=topic_id,
            partition=int(partition),
            offset=int(offset),
            is_range=is_range,
            redrive_run=run,
        )
    except ValueError:
        raise ValueError(
            f"{wid!r} is not a Courier workflow ID (courier/<group>/<topic>@<topic ID>/"
            "<partition>/<offset>)"
        ) from None


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
