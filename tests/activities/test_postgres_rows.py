"""Row building of the PostgreSQL destination: which column holds what, without a server."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from activities.encoding import record_envelope
from activities.errors import PermanentExportError
from activities.postgres import (
    COLUMNS,
    PostgresConfig,
    create_table_sql,
    insert_sql,
    row_columns,
)
from workflows.types import Blob, Header, KafkaRecord, OutgoingRecord


def config(**overrides: Any) -> PostgresConfig:
    fields: dict[str, Any] = {
        "name": "pg",
        "kind": "postgres",
        "dsn": "postgresql://u:p@127.0.0.1/db",
        "table": "orders",
    }
    return PostgresConfig.model_validate(fields | overrides)


def outgoing(
    *,
    key: bytes | None = b"order-1",
    value: bytes | None = b'{"total": 42}',
    headers: list[Header] | None = None,
) -> OutgoingRecord:
    record = KafkaRecord(
        topic="orders",
        partition=0,
        offset=7,
        key=Blob.of(key) if key is not None else None,
        value=Blob.of(value) if value is not None else None,
        timestamp_ms=1_700_000_000_000,
        headers=headers or [],
        topic_id="Fw0ygiNXSnSO1Fhrqe3sDw",
    )
    return OutgoingRecord(idempotency_key="courier/g/orders/0/7", record=record)


INSERTED = [c for c in COLUMNS if c != "exported_at"]


def row(item: OutgoingRecord, **overrides: Any) -> dict[str, Any]:
    """The one row ``row_columns`` builds for ``item``, by column name."""
    columns = row_columns(config(**overrides), [item])
    return {name: column[0] for name, column in zip(INSERTED, columns, strict=True)}


def test_insert_names_every_column_once_in_row_order() -> None:
    sql = insert_sql(config())
    listed = re.search(r"INSERT INTO \S+\s*\(([^)]*)\)", sql)
    assert listed is not None
    assert [c.strip().strip('"') for c in listed.group(1).split(",")] == INSERTED
    assert len(re.findall(r"\$\d+::", sql)) == len(row_columns(config(), [outgoing()]))


def test_existing_tables_gain_the_key_bytes_column() -> None:
    statements = create_table_sql(config(table="exports.orders"))
    assert '"key_bytes" bytea,' in statements[1]
    assert 'ALTER TABLE "exports"."orders" ADD COLUMN IF NOT EXISTS "key_bytes" bytea' in statements


def test_key_bytes_is_a_conflict_key_column() -> None:
    assert config(conflict_key=["key", "key_bytes"]).conflict_key == ["key", "key_bytes"]


@pytest.mark.parametrize(
    ("key", "text", "raw"),
    [
        (b"order-1", "order-1", None),
        (b"", "", None),
        (b"\xff\xfe", None, b"\xff\xfe"),
        (b"a\x00b", None, b"a\x00b"),
        (None, None, None),
    ],
)
def test_key_is_text_when_text_can_hold_it_else_bytes(
    key: bytes | None, text: str | None, raw: bytes | None
) -> None:
    cells = row(outgoing(key=key))
    assert (cells["key"], cells["key_bytes"]) == (text, raw)


@pytest.mark.parametrize(
    ("policy", "value", "jsonb", "text", "raw"),
    [
        ("text", b'{"total":42}', '{"total":42}', '{"total":42}', None),
        ("bytes", b"[1, 2]", "[1, 2]", "[1, 2]", None),
        ("fail", b'"x"', '"x"', '"x"', None),
        ("text", b'{"a": "\\u0000"}', None, '{"a": "\\u0000"}', None),
        ("fail", b'{"\\u0000": 1}', None, '{"\\u0000": 1}', None),
        ("text", b'["\\ud800"]', None, '["\\ud800"]', None),
        ("text", b'["\\ud83d\\ude00"]', '["\\ud83d\\ude00"]', '["\\ud83d\\ude00"]', None),
        ("text", b"[1e-20000]", None, "[1e-20000]", None),
        ("text", b"1e131072", None, "1e131072", None),
        ("text", b"1.5e-16383", None, "1.5e-16383", None),
        ("text", b"1e-16383", "1e-16383", "1e-16383", None),
        ("text", b"plain", None, "plain", None),
        ("text", b"", None, "", None),
        ("text", b"nul\x00inside", None, None, b"nul\x00inside"),
        ("text", b"\xff\xfe", None, None, b"\xff\xfe"),
        ("bytes", b"plain", None, None, b"plain"),
        ("bytes", b"", None, None, b""),
        ("text", None, None, None, None),
        ("fail", None, None, None, None),
    ],
)
def test_value_columns(
    policy: str, value: bytes | None, jsonb: str | None, text: str | None, raw: bytes | None
) -> None:
    cells = row(outgoing(value=value), non_json_values=policy)
    assert (cells["value"], cells["value_text"], cells["value_bytes"]) == (jsonb, text, raw)


@pytest.mark.parametrize("value", [b"oops", b"", b"[1, 2", b"\xff", b"nul\x00"])
def test_fail_policy_refuses_values_that_are_not_json(value: bytes) -> None:
    with pytest.raises(PermanentExportError) as caught:
        row(outgoing(value=value), non_json_values="fail")
    assert "orders/0/7 is not JSON" in caught.value.reason


def test_header_names_and_values_postgres_cannot_hold_are_base64() -> None:
    headers = [
        Header("trace", Blob.of(b"t1")),
        Header("nul", Blob.of(b"\x00\x01")),
        Header("bin", Blob.of(b"\xff")),
        Header("a\x00b", Blob.of(b"v")),
        Header("none", None),
    ]
    cells = row(outgoing(headers=headers))

    assert json.loads(cells["headers"]) == [
        {"name": "trace", "value": "t1", "value_encoding": "text"},
        {"name": "nul", "value": "AAE=", "value_encoding": "base64"},
        {"name": "bin", "value": "/w==", "value_encoding": "base64"},
        {"name": "YQBi", "name_encoding": "base64", "value": "v", "value_encoding": "text"},
        {"name": "none", "value": None},
    ]
    assert base64.b64decode("AAE=") == b"\x00\x01" and base64.b64decode("YQBi") == b"a\x00b"
    assert "\\u0000" not in cells["headers"]


def test_record_envelope_keeps_nul_as_text() -> None:
    headers = [Header("a\x00b", Blob.of(b"\x00\x01"))]
    envelope = record_envelope(outgoing(headers=headers).record)
    assert envelope["headers"] == [
        {"name": "a\x00b", "value": "\x00\x01", "value_encoding": "text"}
    ]


def test_one_array_per_column_one_cell_per_record() -> None:
    batch = [outgoing(key=b"k"), outgoing(key=b"\xff", value=None)]
    columns = row_columns(config(), batch)
    assert len(columns) == len(INSERTED)
    assert all(len(column) == 2 for column in columns)
    by_name = dict(zip(INSERTED, columns, strict=True))
    assert by_name["key"] == ["k", None] and by_name["key_bytes"] == [None, b"\xff"]
    assert by_name["topic_id"] == ["Fw0ygiNXSnSO1Fhrqe3sDw"] * 2
