"""``courier map``: what a destination would receive for a record, without sending anything.

The record comes from a JSON file (:func:`record_from_file`) or from Kafka by coordinates
(:func:`record_from_kafka`); the destination is built from the config as a worker builds it
(not opened: nothing is connected or created) and asked for its ``preview`` of the record,
which runs the same code as its ``write``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from activities.mapping import MappingError
from activities.registry import KINDS, create_destination
from courier.config.model import CourierConfig, KafkaConfig
from courier.core.ids import workflow_id
from workflows.types import Blob, Header, KafkaRecord, OutgoingRecord

FILE_FIELDS = ("key", "key_base64", "value", "value_base64", "headers", "topic", "topic_id")
FILE_FIELDS_INT = ("partition", "offset", "timestamp_ms")
FETCH_TIMEOUT_S = 10.0


class PreviewError(Exception):
    """The preview cannot be made; the message says why and what to do."""


@runtime_checkable
class Previewable(Protocol):
    """A destination that can show what it would write for a record."""

    def preview(self, item: OutgoingRecord) -> dict[str, object]:
        """What the record would become at the destination (raises MappingError)."""
        ...


def record_from_file(path: Path) -> KafkaRecord:
    """A record described by a JSON file (see ``courier map --help``)."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise PreviewError(f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:
        raise PreviewError(f"{path} is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise PreviewError(f"{path} must hold one JSON object describing the record")
    unknown = sorted(set(data) - set(FILE_FIELDS) - set(FILE_FIELDS_INT))
    if unknown:
        allowed = ", ".join(FILE_FIELDS + FILE_FIELDS_INT)
        raise PreviewError(f"{path}: unknown field(s) {', '.join(unknown)}; allowed: {allowed}")
    for name in FILE_FIELDS_INT:
        if name in data and (type(data[name]) is not int):
            raise PreviewError(f"{path}: {name} must be an integer")
    headers: list[Header] = []
    raw_headers = data.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise PreviewError(f"{path}: headers must be an object of name: text (or list of texts)")
    for name, values in raw_headers.items():
        for value in values if isinstance(values, list) else [values]:
            if value is not None and not isinstance(value, str):
                raise PreviewError(f"{path}: header {name!r} must be text or null")
            headers.append(Header(name, None if value is None else Blob(value)))
    return KafkaRecord(
        topic=_text(data, "topic", path) or "example",
        topic_id=_text(data, "topic_id", path) or "AAAAAAAAAAAAAAAAAAAAAA",
        partition=data.get("partition", 0),
        offset=data.get("offset", 0),
        timestamp_ms=data.get("timestamp_ms", 0),
        key=_blob(data, "key", path),
        value=_blob(data, "value", path),
        headers=headers,
    )


def _text(data: dict[str, Any], name: str, path: Path) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise PreviewError(f"{path}: {name} must be text")
    return value


def _blob(data: dict[str, Any], name: str, path: Path) -> Blob | None:
    """``name`` (text as is, other JSON encoded) or ``name_base64`` (bytes) as a Blob."""
    if f"{name}_base64" in data:
        if name in data:
            raise PreviewError(f"{path}: give {name} or {name}_base64, not both")
        try:
            raw = base64.b64decode(data[f"{name}_base64"], validate=True)
        except (ValueError, TypeError) as err:
            raise PreviewError(f"{path}: {name}_base64 is not base64: {err}") from None
        return Blob.of(raw)
    if name not in data or data[name] is None:
        return None
    value = data[name]
    if isinstance(value, str):
        return Blob(value)
    if name == "key":
        raise PreviewError(f"{path}: key must be text (or key_base64 for bytes)")
    return Blob(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


async def record_from_kafka(
    kafka: KafkaConfig, *, topic: str, partition: int, offset: int
) -> KafkaRecord:
    """The record at these coordinates, read from the configured Kafka.

    Brokers that cannot be used are a one-line :class:`PreviewError` (as ingest says it),
    before aiokafka is started: it would log errors and fail with a list of addresses.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    from ingest.handoff import to_kafka_record
    from ingest.kafka import KafkaUnreachable, check_brokers, consumer_options
    from ingest.topic_ids import fetch_topic_ids

    try:
        await check_brokers(kafka)
    except KafkaUnreachable as err:
        raise PreviewError(str(err)) from None
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        **consumer_options(kafka, group=False),
    )
    try:
        try:
            await consumer.start()
        except KafkaError as err:
            raise PreviewError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {err}") from None
        topic_id = (await fetch_topic_ids(consumer._client, [topic])).get(topic)
        if topic_id is None:
            raise PreviewError(f"topic {topic!r} does not exist at {kafka.bootstrap_servers}")
        tp = TopicPartition(topic, partition)
        metadata = await consumer._client.fetch_all_metadata()
        partitions = metadata.partitions_for_topic(topic) or set()
        if partition not in partitions:
            raise PreviewError(f"topic {topic!r} has no partition {partition}")
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if not start <= offset < end:
            raise PreviewError(
                f"{topic}/{partition} holds offsets {start}..{end - 1}, not {offset}"
                if end > start
                else f"{topic}/{partition} holds no records"
            )
        consumer.seek(tp, offset)
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                while True:
                    batch = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
                    for message in batch.get(tp, []):
                        if message.offset == offset:
                            return to_kafka_record(message, topic_id)
                        raise PreviewError(
                            f"{topic}/{partition}/{offset} is not a record (a transaction "
                            "marker or a compacted one); try another offset"
                        )
        except TimeoutError:
            raise PreviewError(
                f"{topic}/{partition}/{offset} could not be read within {FETCH_TIMEOUT_S:g}s"
            ) from None
    finally:
        await consumer.stop()


def preview(config: CourierConfig, name: str, record: KafkaRecord) -> dict[str, object]:
    """What destination ``name`` would receive for ``record`` (MappingError when it fails)."""
    dest_config = config.destination(name)
    destination = create_destination(dest_config)
    if not isinstance(destination, Previewable):
        raise PreviewError(f"destination kind {dest_config.kind!r} cannot show a preview")
    key = workflow_id(
        group=config.kafka.group,
        topic=record.topic,
        topic_id=record.topic_id or "",
        partition=record.partition,
        offset=record.offset,
    )
    shown = destination.preview(OutgoingRecord(idempotency_key=key, record=record))
    return {"destination": name, "kind": dest_config.kind, **shown}


def render(result: dict[str, Any]) -> str:
    """A preview as text: a heading, then the request, line or row as its kind shows it."""
    shown = dict(result)
    name, kind = shown.pop("destination"), shown.pop("kind")
    head = f"# {name} ({kind}) would receive:"
    return "\n".join([head, *KINDS[kind].describe_preview(shown)])


__all__ = [
    "MappingError",
    "PreviewError",
    "preview",
    "record_from_file",
    "record_from_kafka",
    "render",
]
