"""The kafka destination's config and what it makes of a record (no broker: see
tests/integration/test_kafka_destination.py for producing)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from activities.errors import PermanentExportError
from activities.kafka import IDEMPOTENCY_HEADER, KafkaDestination, KafkaDestinationConfig
from activities.registry import KINDS
from workflows.types import Blob, Header, KafkaRecord, OutgoingRecord


def config(**extra: Any) -> KafkaDestinationConfig:
    return KafkaDestinationConfig.model_validate(
        {"name": "k", "kind": "kafka", "bootstrap_servers": "b:9092", "topic": "out", **extra}
    )


def item(key: bytes | None = b"order-1", value: bytes | None = b'{"total": 12}') -> OutgoingRecord:
    return OutgoingRecord(
        idempotency_key="courier/g/src@TID/2/17",
        record=KafkaRecord(
            topic="src",
            partition=2,
            offset=17,
            key=None if key is None else Blob.of(key),
            value=None if value is None else Blob.of(value),
            timestamp_ms=1_700_000_000_000,
            headers=[
                Header("trace", Blob("abc")),
                Header("raw", Blob.of(b"\xff\x00")),
                Header("empty", None),
                Header(IDEMPOTENCY_HEADER, Blob("from upstream")),
            ],
            topic_id="TID",
        ),
    )


COURIER = [
    (IDEMPOTENCY_HEADER, b"courier/g/src@TID/2/17"),
    ("courier.topic", b"src"),
    ("courier.topic_id", b"TID"),
    ("courier.partition", b"2"),
    ("courier.offset", b"17"),
]


def test_the_kind_is_registered() -> None:
    assert KINDS["kafka"] is KafkaDestinationConfig


def test_as_is_keeps_key_value_headers_and_timestamp_and_replaces_courier_headers() -> None:
    message = KafkaDestination(config()).message(item())
    assert (message.key, message.value) == (b"order-1", b'{"total": 12}')
    assert message.timestamp_ms == 1_700_000_000_000
    assert message.headers == [
        ("trace", b"abc"),
        ("raw", b"\xff\x00"),
        ("empty", None),
        *COURIER,
    ]


def test_mapped_key_value_and_headers() -> None:
    destination = KafkaDestination(
        config(
            key="{value.total}",
            value={"mapping": '{"amount": value.total, "id": key}'},
            headers={"x-trace": "t-{headers.trace}"},
            timestamp="now",
        )
    )
    message = destination.message(item())
    assert message.key == b"12"
    assert message.value is not None
    assert json.loads(message.value) == {"amount": 12, "id": "order-1"}
    assert message.headers[3:] == [("x-trace", b"t-abc"), *COURIER]
    assert message.timestamp_ms is None


def test_json_value_is_the_envelope_and_a_null_record_gets_an_empty_value() -> None:
    envelope = KafkaDestination(config(value="json")).message(item())
    assert envelope.value is not None and json.loads(envelope.value)["offset"] == 17
    empty = KafkaDestination(config()).message(item(key=None, value=None))
    assert (empty.key, empty.value) == (None, b"")


def test_a_tombstone_stays_a_tombstone() -> None:
    message = KafkaDestination(config()).message(item(value=None))
    assert (message.key, message.value) == (b"order-1", None)


def test_a_mapping_that_fails_fails_the_record_before_anything_is_sent() -> None:
    destination = KafkaDestination(config(value={"mapping": "value.missing"}))
    with pytest.raises(PermanentExportError) as failed:
        destination._message(item())
    assert failed.value.reached is False
    assert failed.value.reason.startswith("src/2/17: value.mapping: mapping `value.missing`")


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"headers": {IDEMPOTENCY_HEADER: "x"}}, "courier.idempotency_key are set by Courier"),
        ({"delivery_timeout": "30s"}, "delivery_timeout (30s) must be below timeouts.attempt"),
        ({"key": "{vlaue}"}, "destination k, key: mapping `vlaue` reads 'vlaue'"),
        ({"value": {"mapping": "1", "template": "x"}}, "exactly one of `mapping` or `template`"),
        ({"topic": "no spaces"}, "String should match pattern"),
    ],
)
def test_invalid_configs_say_what_is_wrong(extra: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as invalid:
        config(**extra)
    assert problem in str(invalid.value)


def test_preview_shows_the_record_as_produced() -> None:
    destination = KafkaDestination(config())
    lines = KafkaDestinationConfig.describe_preview(destination.preview(item()))
    assert lines[:3] == ["# produced to out at b:9092", 'key: "order-1"', 'header trace: "abc"']
    assert 'header raw: {"base64": "/wA="}' in lines
    assert lines[-2:] == ["timestamp_ms: 1700000000000", 'value: {"total": 12}']
