"""Record formats: the wire format, Avro to JSON, the schema cache, failures, and the config."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import re
import uuid
from decimal import Decimal
from typing import Any

import fastavro
import httpx
import pytest

from activities.encoding import DecodedBlob, record_envelope
from activities.errors import PermanentExportError, RetryableExportError
from activities.formats import (
    RecordDecoder,
    RegistryUnavailableError,
    SchemaRegistryClient,
    SchemaRegistryConfig,
    TopicFormat,
    UndecodableError,
    split_wire_format,
    wire_format,
)
from activities.mapping import record_data
from courier.config.lint import WrittenSecret, written_secrets
from courier.config.model import ConfigError, parse_config
from workflows.types import Blob, KafkaRecord, OutgoingRecord

URL = "http://registry.test/apis/ccompat/v7"

ORDER = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": {"type": "record", "name": "C", "fields": [
            {"name": "id", "type": "string"}]}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal",
                                    "precision": 10, "scale": 2}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "state", "type": {"type": "enum", "name": "S", "symbols": ["NEW", "PAID"]}},
        {"name": "blob", "type": "bytes"},
        {"name": "sig", "type": {"type": "fixed", "name": "F", "size": 2}},
        {"name": "tags", "type": {"type": "map", "values": "int"}},
        {"name": "ratio", "type": "double"},
    ],
}  # fmt: skip

ORDER_VALUE = {
    "id": 17,
    "customer": {"id": "c-1"},
    "note": "fragile",
    "amount": Decimal("12.50"),
    "at": datetime.datetime(2026, 12, 7, 12, 0, 0, 123000, tzinfo=datetime.UTC),
    "day": datetime.date(2026, 12, 7),
    "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "state": "PAID",
    "blob": b"\x00\xff",
    "sig": b"ab",
    "tags": {"x": 1},
    "ratio": float("nan"),
}

ORDER_JSON = {
    "id": 17,
    "customer": {"id": "c-1"},
    "note": "fragile",
    "amount": "12.50",
    "at": "2026-12-07T12:00:00.123000+00:00",
    "day": "2026-12-07",
    "ref": "12345678-1234-5678-1234-567812345678",
    "state": "PAID",
    "blob": "AP8=",
    "sig": "YWI=",
    "tags": {"x": 1},
    "ratio": "NaN",
}


def avro_bytes(schema: Any, value: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return out.getvalue()


class Registry:
    """A fake registry behind httpx's mock transport: schemas by ID, or a status to answer."""

    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:
        self.schemas = schemas
        self.status: int | None = None
        self.down = False
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if self.status is not None:
            return httpx.Response(self.status, json={"message": "no"})
        schema_id = int(request.url.path.rsplit("/", 1)[1])
        if schema_id not in self.schemas:
            return httpx.Response(404, json={"error_code": 40403, "message": "not found"})
        return httpx.Response(200, json=self.schemas[schema_id])

    def client(self, **config: Any) -> SchemaRegistryClient:
        return SchemaRegistryClient(
            SchemaRegistryConfig(url=URL, **config), transport=httpx.MockTransport(self.handle)
        )


def registry() -> Registry:
    return Registry(
        {
            1: {"schema": json.dumps(ORDER)},
            2: {"schema": json.dumps({"type": "object"}), "schemaType": "JSON"},
            3: {"schema": json.dumps({"type": "string"}), "schemaType": "AVRO"},
        }
    )


def item(value: bytes | None, key: bytes | None = b"k", topic: str = "orders") -> OutgoingRecord:
    return OutgoingRecord(
        "courier/g/orders/0/5",
        KafkaRecord(
            topic,
            0,
            5,
            None if key is None else Blob.of(key),
            None if value is None else Blob.of(value),
            0,
        ),
    )


def decoder(reg: Registry, **formats: TopicFormat) -> RecordDecoder:
    return RecordDecoder(formats or {"orders": TopicFormat(value="avro")}, reg.client())


# ------------------------------------------------------------------------------- wire format
def test_the_wire_format_is_magic_byte_schema_id_payload() -> None:
    data = wire_format(42, b"payload")
    assert data == b"\x00\x00\x00\x00\x2apayload"
    assert split_wire_format(data) == (42, b"payload")
    assert split_wire_format(wire_format(2**32 - 1, b"")) == (2**32 - 1, b"")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00\x01", "3 bytes: too short"),
        (b'{"id": 1}', "first byte is 123, not the wire format's magic byte 0"),
    ],
)
def test_bytes_not_in_the_wire_format_are_undecodable(data: bytes, reason: str) -> None:
    with pytest.raises(UndecodableError, match=reason):
        split_wire_format(data)


# ------------------------------------------------------------------------------- Avro to JSON
async def test_avro_types_map_to_json_as_documented() -> None:
    reg = registry()
    out = await decoder(reg).decode(item(wire_format(1, avro_bytes(ORDER, ORDER_VALUE))))
    value = out.record.value
    assert isinstance(value, DecodedBlob)
    assert value.data == ORDER_JSON
    json.dumps(value.data, allow_nan=False)  # plain JSON: no NaN, no bytes, no dates


async def test_a_union_is_its_plain_value_and_a_null_branch_is_null() -> None:
    reg = registry()
    out = await decoder(reg).decode(
        item(wire_format(1, avro_bytes(ORDER, {**ORDER_VALUE, "note": None})))
    )
    assert isinstance(out.record.value, DecodedBlob)
    assert out.record.value.data["note"] is None


async def test_the_envelope_and_mappings_see_the_decoded_value_and_the_bytes_stay() -> None:
    reg = registry()
    raw = wire_format(1, avro_bytes(ORDER, ORDER_VALUE))
    out = await decoder(reg).decode(item(raw))
    envelope = record_envelope(out.record)
    assert (envelope["value"], envelope["value_encoding"]) == (ORDER_JSON, "json")
    assert (envelope["key"], envelope["key_encoding"]) == ("k", "text")
    data = record_data(out)
    assert (data["value"]["customer"]["id"], data["value_encoding"]) == ("c-1", "json")
    assert out.record.value is not None and out.record.value.to_bytes() == raw


async def test_avro_with_bytes_left_over_or_too_few_bytes_fails() -> None:
    reg = registry()
    good = avro_bytes(ORDER, ORDER_VALUE)
    for payload, reason in [(good + b"\x00", "1 bytes left over"), (good[:4], "does not decode")]:
        with pytest.raises(PermanentExportError, match=reason) as err:
            await decoder(reg).decode(item(wire_format(1, payload)))
        assert err.value.reached is False


# ------------------------------------------------------------------------------- the cache
async def test_a_schema_is_fetched_once_per_id() -> None:
    reg = registry()
    dec = decoder(reg)
    raw = wire_format(1, avro_bytes(ORDER, ORDER_VALUE))
    await dec.decode_all([item(raw)] * 5)
    await asyncio.gather(*(dec.decode(item(raw)) for _ in range(5)))
    assert len(reg.requests) == 1
    assert str(reg.requests[0].url) == f"{URL}/schemas/ids/1"


async def test_concurrent_first_reads_of_an_id_share_one_fetch() -> None:
    reg = registry()
    client = reg.client()
    schemas = await asyncio.gather(*(client.schema(3) for _ in range(10)))
    assert {s.schema_id for s in schemas} == {3}
    assert len(reg.requests) == 1


async def test_the_cache_drops_the_least_recently_used_schema() -> None:
    reg = registry()
    client = reg.client(cache_size=2)
    await client.schema(1)
    await client.schema(3)
    await client.schema(1)  # 1 used last: 3 goes when 2 comes
    await client.schema(2)
    assert client.cached(1) is not None and client.cached(2) is not None
    assert client.cached(3) is None
    assert client.fetches == 3


# ------------------------------------------------------------------------------- failures
async def test_an_unknown_schema_id_fails_the_record_with_where_and_why() -> None:
    reg = registry()
    with pytest.raises(PermanentExportError) as err:
        await decoder(reg).decode(item(wire_format(42, b"\x02")))
    assert err.value.reason == (
        f"value of orders/0/5: schema id 42 not found in the registry at {URL}"
    )
    assert err.value.reached is False


@pytest.mark.parametrize(
    ("status", "down", "reason"),
    [
        (503, False, f"schema registry at {URL} answered HTTP 503 for schema id 1"),
        (None, True, f"schema registry at {URL} unreachable (ConnectError"),
        (401, False, "refused the credentials (HTTP 401): check kafka.schema_registry.username"),
    ],
)
async def test_a_registry_that_cannot_answer_is_retryable(
    status: int | None, down: bool, reason: str
) -> None:
    reg = registry()
    reg.status, reg.down = status, down
    dec = decoder(reg)
    raw = wire_format(1, avro_bytes(ORDER, ORDER_VALUE))
    with pytest.raises(RetryableExportError, match="value of orders/0/5 waits: ") as err:
        await dec.decode(item(raw))
    assert reason in err.value.reason
    reg.status, reg.down = None, False  # back: the same record decodes
    out = await dec.decode(item(raw))
    assert isinstance(out.record.value, DecodedBlob)


async def test_a_schema_of_another_type_fails() -> None:
    reg = registry()
    with pytest.raises(PermanentExportError, match="schema id 2 is a JSON schema, not Avro"):
        await decoder(reg).decode(item(wire_format(2, b"{}")))
    dec = decoder(reg, orders=TopicFormat(value="json-schema"))
    with pytest.raises(PermanentExportError, match="schema id 1 is a AVRO schema, not JSON"):
        await dec.decode(item(wire_format(1, b"{}")))


async def test_json_schema_is_the_json_after_the_header() -> None:
    reg = registry()
    dec = decoder(reg, orders=TopicFormat(value="json-schema"))
    out = await dec.decode(item(wire_format(2, b'{"id": 7, "ok": true}')))
    assert record_envelope(out.record)["value"] == {"id": 7, "ok": True}
    with pytest.raises(PermanentExportError, match="is not JSON"):
        await dec.decode(item(wire_format(2, b"{nope")))


async def test_avro_keys_decode_too() -> None:
    reg = registry()
    dec = decoder(reg, orders=TopicFormat(key="avro", value="json"))
    key = wire_format(3, avro_bytes({"type": "string"}, "order-17"))
    out = await dec.decode(item(b'{"a": 1}', key=key))
    envelope = record_envelope(out.record)
    assert (envelope["key"], envelope["key_encoding"]) == ("order-17", "json")
    assert (envelope["value"], envelope["value_encoding"]) == ({"a": 1}, "json")


# ------------------------------------------------------------------------------- plain formats
@pytest.mark.parametrize(
    ("fmt", "raw", "value", "encoding"),
    [
        (TopicFormat(value="json"), b'{"a": 1}', {"a": 1}, "json"),
        (TopicFormat(value="json"), b"plain", "plain", "text"),
        (TopicFormat(value="text"), b'{"a": 1}', '{"a": 1}', "text"),
        (TopicFormat(value="bytes"), b"hi", "aGk=", "base64"),
        (TopicFormat(value="bytes"), b"\xff", "/w==", "base64"),
        (TopicFormat(value="text"), b"\xff", "/w==", "base64"),
    ],
)
async def test_plain_formats(fmt: TopicFormat, raw: bytes, value: Any, encoding: str) -> None:
    out = await RecordDecoder({"*": fmt}).decode(item(raw))
    envelope = record_envelope(out.record)
    assert (envelope["value"], envelope["value_encoding"]) == (value, encoding)
    assert record_data(out)["value"] == value


async def test_a_json_key_is_parsed_and_tombstones_stay_null() -> None:
    dec = RecordDecoder({"*": TopicFormat(key="json", value="avro")}, registry().client())
    out = await dec.decode(item(None, key=b'{"id": 1}'))
    envelope = record_envelope(out.record)
    assert (envelope["key"], envelope["key_encoding"]) == ({"id": 1}, "json")
    assert envelope["value"] is None


async def test_topics_without_a_format_are_untouched() -> None:
    dec = decoder(registry())
    original = item(b"\x00\x00\x00\x00\x01", topic="other")
    assert await dec.decode(original) is original


def test_no_decoder_when_every_topic_reads_as_today() -> None:
    assert RecordDecoder.of({}, None) is None
    assert RecordDecoder.of({"orders": TopicFormat()}, None) is None
    assert RecordDecoder.of({"orders": TopicFormat(value="text")}, None) is not None


# ------------------------------------------------------------------------------- config
def config(**kafka: Any) -> dict[str, Any]:
    return {
        "kafka": {"topics": ["orders"], **kafka},
        "destinations": [{"name": "archive", "kind": "file", "path": "/tmp/x.jsonl"}],
    }


def test_config_formats_and_registry() -> None:
    loaded = parse_config(
        config(
            formats={"orders": {"value": "avro"}, "*": {"key": "json"}},
            schema_registry={
                "url": URL,
                "username": "u",
                "password": "${SR_PASSWORD}",
                "ca_file": "/etc/ca.pem",
            },
        ),
        environ={"SR_PASSWORD": "s3cret"},
    )
    assert loaded.kafka.formats["orders"] == TopicFormat(key="text", value="avro")
    registry_config = loaded.kafka.schema_registry
    assert registry_config is not None and registry_config.password is not None
    assert registry_config.password.get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        (
            {"formats": {"orders": {"value": "avro"}}},
            "formats.orders.value: avro is decoded with schemas from a registry: set "
            "kafka.schema_registry.url",
        ),
        ({"formats": {"payments": {"value": "text"}}}, "formats.payments: not a topic"),
        ({"formats": {"orders": {"value": "xml"}}}, "kafka.formats.orders.value"),
    ],
)
def test_config_errors_name_the_field(kafka: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config(**kafka), environ={})
    assert message in str(err.value)


def test_a_registry_password_written_in_the_file_is_a_written_secret() -> None:
    data = config(
        formats={"orders": {"value": "avro"}},
        schema_registry={"url": URL, "username": "u", "password": "hunter2"},
    )
    assert written_secrets(data) == [
        WrittenSecret(("kafka", "schema_registry", "password"), password=False, default_of=None)
    ]
    data["kafka"]["schema_registry"]["password"] = "${SR_PASSWORD}"
    assert written_secrets(data) == []


# ------------------------------------------------------------------------------- Protobuf
PROTO = """
syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
message Ping { string id = 1; }
message Order {
  int64 id = 1;
  string customer = 2;
  bytes blob = 3;
  enum State { NEW = 0; PAID = 1; }
  State state = 4;
  google.protobuf.Timestamp at = 5;
  message Line { string sku = 1; int32 count = 2; }
  repeated Line lines = 6;
  double total = 7;
  optional string note = 8;
}
"""


def proto_registry() -> Registry:
    return Registry({7: {"schema": PROTO, "schemaType": "PROTOBUF", "references": []}})


def proto_message(name: str) -> Any:
    from google.protobuf import message_factory

    from activities.formats import compile_proto

    file = compile_proto(PROTO, 7)
    return message_factory.GetMessageClass(file.pool.FindMessageTypeByName(name))()


async def test_protobuf_is_decoded_with_the_proto3_json_mapping() -> None:
    order_message = proto_message("shop.Order")
    order_message.id, order_message.customer, order_message.blob = 5, "c-5", b"\x00\xff"
    order_message.state = 1
    order_message.at.FromSeconds(1_700_000_000)
    order_message.lines.add(sku="a", count=2)
    # Index [1]: the second message of the file (Order), written as count 1, index 1 (zigzag).
    raw = wire_format(7, b"\x02\x02" + order_message.SerializeToString())
    dec = RecordDecoder({"*": TopicFormat(value="protobuf")}, proto_registry().client())
    out = await dec.decode(item(raw))
    assert record_envelope(out.record)["value"] == {
        "id": "5",
        "customer": "c-5",
        "blob": "AP8=",
        "state": "PAID",
        "at": "2023-11-14T22:13:20Z",
        "lines": [{"sku": "a", "count": 2}],
        "total": 0.0,
    }


async def test_protobuf_message_indexes_pick_nested_and_first_messages() -> None:
    line = proto_message("shop.Order.Line")
    line.sku = "b"
    ping = proto_message("shop.Ping")
    ping.id = "p"
    dec = RecordDecoder({"*": TopicFormat(value="protobuf")}, proto_registry().client())
    nested = wire_format(7, b"\x04\x02\x00" + line.SerializeToString())  # [1, 0]: Order.Line
    first = wire_format(7, b"\x00" + ping.SerializeToString())  # 0: the first message
    assert record_envelope((await dec.decode(item(nested))).record)["value"] == {
        "sku": "b",
        "count": 0,
    }
    assert record_envelope((await dec.decode(item(first))).record)["value"] == {"id": "p"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x02\x0a", "message indexes [5] name no message of schema id 7"),
        (b"\x02", "message indexes do not decode"),
        (b"\x02\x02\x0a\x05ab", "does not decode as shop.Order"),
    ],
)
async def test_bad_protobuf_payloads_fail(payload: bytes, reason: str) -> None:
    dec = RecordDecoder({"*": TopicFormat(value="protobuf")}, proto_registry().client())
    with pytest.raises(PermanentExportError, match=re.escape(reason)):
        await dec.decode(item(wire_format(7, payload)))


async def test_a_schema_protoc_cannot_compile_fails_the_record() -> None:
    reg = Registry({8: {"schema": "syntax = nope", "schemaType": "PROTOBUF"}})
    dec = RecordDecoder({"*": TopicFormat(value="protobuf")}, reg.client())
    with pytest.raises(PermanentExportError, match="schema id 8 is not a .proto file protoc"):
        await dec.decode(item(wire_format(8, b"\x00")))


# ------------------------------------------------------------------------------- PostgreSQL
async def test_the_postgres_table_stores_the_decoded_value() -> None:
    from activities.postgres import COLUMNS, PostgresConfig, row_columns

    reg = registry()
    raw = wire_format(1, avro_bytes(ORDER, ORDER_VALUE))
    dec = RecordDecoder({"orders": TopicFormat(key="bytes", value="avro")}, reg.client())
    out = await dec.decode(item(raw, key=b"k-1"))
    table = PostgresConfig.model_validate(
        {"name": "pg", "kind": "postgres", "dsn": "postgresql://u@127.0.0.1/db", "table": "t"}
    )
    columns = row_columns(table, [out])
    names = [c for c in COLUMNS if c != "exported_at"]
    row = {c: col[0] for c, col in zip(names, columns, strict=True)}
    assert json.loads(row["value"]) == ORDER_JSON  # the jsonb column
    assert row["value_bytes"] is None
    assert (row["key"], row["key_bytes"]) == (None, b"k-1")


# ------------------------------------------------------------------------- routing (ingest)
async def test_routing_decodes_with_prefetched_schemas_and_a_registry_outage_holds_records() -> (
    None
):
    reg = registry()
    dec = decoder(reg)
    raw = wire_format(1, avro_bytes(ORDER, ORDER_VALUE))
    unknown = wire_format(99, b"\x02")
    records = [("orders", b"k", raw), ("orders", b"k", unknown), ("other", None, raw)]
    with pytest.raises(UndecodableError, match="schema id 1 not found"):
        dec.decode_now(item(raw).record)  # nothing fetched yet: routing must prefetch first

    reg.down = True
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        await dec.prefetch(records)
    reg.down = False
    await dec.prefetch(records)
    fetched = len(reg.requests)
    await dec.prefetch(records)  # cached, and 99 known to be unknown: no request
    assert len(reg.requests) == fetched

    value = dec.decode_now(item(raw).record).value
    decoded = (await dec.decode(item(raw))).record.value  # as the workers decode it
    assert isinstance(value, DecodedBlob) and isinstance(decoded, DecodedBlob)
    assert value.data == decoded.data and value.data is not None
    with pytest.raises(UndecodableError, match="value of orders/0/5: schema id 99 not found"):
        dec.decode_now(item(unknown).record)
