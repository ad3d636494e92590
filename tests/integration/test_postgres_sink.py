"""The PostgreSQL destination against a real server: one row per record, repeats are no-ops."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from activities.errors import PermanentExportError, RetryableExportError
from activities.postgres import PostgresConfig, PostgresDestination
from workflows.types import Blob, Header, KafkaRecord, OutgoingRecord

pytestmark = pytest.mark.integration


def outgoing(
    offset: int, value: bytes | None = b'{"total": 42}', *, partition: int = 0
) -> OutgoingRecord:
    record = KafkaRecord(
        topic="orders",
        partition=partition,
        offset=offset,
        key=Blob.of(b"order-%d" % offset),
        value=Blob.of(value) if value is not None else None,
        timestamp_ms=1_700_000_000_123,
        headers=[Header("trace", Blob.of(b"t1")), Header("bin", Blob.of(b"\xff"))],
    )
    return OutgoingRecord(idempotency_key=f"courier/g/orders/{partition}/{offset}", record=record)


Opener = Callable[..., Any]


@pytest.fixture
async def open_sink(
    stack_settings: Any, pg_pool: asyncpg.Pool, unique: str
) -> AsyncIterator[Opener]:
    """Opens PostgresDestinations on test tables; closes them and drops the tables after."""
    opened: list[PostgresDestination] = []
    tables: set[str] = set()

    async def open_(**overrides: Any) -> PostgresDestination:
        fields = {
            "name": "pg",
            "kind": "postgres",
            "dsn": stack_settings.postgres_dsn,
            "table": f"courier_test_{unique}",
        } | overrides
        destination = PostgresDestination(PostgresConfig.model_validate(fields))
        tables.add(fields["table"])
        await destination.open()
        opened.append(destination)
        return destination

    yield open_
    for destination in opened:
        await destination.close()
    for table in tables:
        quoted = ".".join(f'"{part}"' for part in table.split("."))
        await pg_pool.execute(f"DROP TABLE IF EXISTS {quoted}")
        if "." in table:
            await pg_pool.execute(f'DROP SCHEMA IF EXISTS "{table.split(".")[0]}"')


async def test_table_is_created_with_one_row_per_record(
    open_sink: Opener, pg_pool: asyncpg.Pool, unique: str
) -> None:
    sink = await open_sink()

    assert await sink.write([outgoing(1), outgoing(2, None)]) == "2 rows inserted"

    rows = await pg_pool.fetch(f'SELECT * FROM "courier_test_{unique}" ORDER BY "offset"')
    assert [r["offset"] for r in rows] == [1, 2]
    first = rows[0]
    assert (first["topic"], first["partition"], first["key"]) == ("orders", 0, "order-1")
    assert first["key_bytes"] is None
    assert json.loads(first["value"]) == {"total": 42}
    assert first["value_text"] == '{"total": 42}' and first["value_bytes"] is None
    assert first["timestamp"] == datetime.fromtimestamp(1_700_000_000.123, tz=UTC)
    assert json.loads(first["headers"]) == [
        {"name": "trace", "value": "t1", "value_encoding": "text"},
        {"name": "bin", "value": "/w==", "value_encoding": "base64"},
    ]
    assert first["idempotency_key"] == "courier/g/orders/0/1"
    assert first["exported_at"] is not None
    assert rows[1]["value"] is None  # a tombstone


async def test_repeat_is_a_no_op(open_sink: Opener, pg_pool: asyncpg.Pool, unique: str) -> None:
    sink = await open_sink()
    await sink.write([outgoing(1)])
    other_worker = await open_sink()  # table exists already: open() leaves it alone

    assert await other_worker.write([outgoing(1)]) == "0 rows inserted (already present)"
    assert await sink.write([outgoing(1), outgoing(2)]) == "1 row inserted, 1 already present"
    assert await pg_pool.fetchval(f'SELECT count(*) FROM "courier_test_{unique}"') == 2


@pytest.mark.parametrize(
    ("policy", "value", "column", "stored"),
    [
        ("text", b"plain text", "value_text", "plain text"),
        ("text", b"\xff\xfe", "value_bytes", b"\xff\xfe"),
        ("text", b"nul\x00inside", "value_bytes", b"nul\x00inside"),
        ("bytes", b"plain text", "value_bytes", b"plain text"),
    ],
)
async def test_non_json_values_follow_the_policy(
    open_sink: Opener,
    pg_pool: asyncpg.Pool,
    unique: str,
    policy: str,
    value: bytes,
    column: str,
    stored: Any,
) -> None:
    sink = await open_sink(non_json_values=policy)
    await sink.write([outgoing(1, value)])

    row = await pg_pool.fetchrow(f'SELECT * FROM "courier_test_{unique}"')
    assert row is not None
    assert row[column] == stored
    assert row["value"] is None


async def test_non_json_value_under_fail_policy_is_permanent(
    open_sink: Opener, pg_pool: asyncpg.Pool, unique: str
) -> None:
    sink = await open_sink(non_json_values="fail")
    with pytest.raises(PermanentExportError) as caught:
        await sink.write([outgoing(1, b"oops")])

    assert "orders/0/1 is not JSON" in caught.value.reason
    assert await pg_pool.fetchval(f'SELECT count(*) FROM "courier_test_{unique}"') == 0


# The recovery queries of docs/configuration.md: every key, value and header as its exact bytes.
RECOVER_RECORDS = """
SELECT "offset", coalesce(key_bytes, convert_to(key, 'UTF8')) AS key,
       coalesce(value_bytes, convert_to(value_text, 'UTF8')) AS value
FROM {table}"""
RECOVER_HEADERS = """
SELECT "offset", n AS position,
       CASE h->>'name_encoding' WHEN 'base64' THEN decode(h->>'name', 'base64')
            ELSE convert_to(h->>'name', 'UTF8') END AS name,
       CASE h->>'value_encoding' WHEN 'base64' THEN decode(h->>'value', 'base64')
            ELSE convert_to(h->>'value', 'UTF8') END AS value
FROM {table}, jsonb_array_elements(headers) WITH ORDINALITY AS e(h, n)"""

HeaderBytes = tuple[bytes, bytes | None]
RecordBytes = tuple[bytes | None, bytes | None, list[HeaderBytes]]

AWKWARD: list[RecordBytes] = [
    (b"\xff\xfe binary", b'{"total": 1}', []),
    (b"nul\x00key", b'{"total": 2}', [(b"trace", b"t1")]),
    (b"k3", b"v", [(b"nul", b"\x00\x01"), (b"bin", b"\xff"), (b"none", None)]),
    (b"k4", b'{"a": "\\u0000",   "b": 1e-20000, "a": 2}', []),
    (b"k5", b"text\x00with nul", [(b"name\x00nul", b"v")]),
    (b"k6", b"", []),
    (None, b"[1,2]", []),
    (None, None, []),
]


def awkward_record(
    offset: int, key: bytes | None, value: bytes | None, headers: list[HeaderBytes]
) -> OutgoingRecord:
    record = KafkaRecord(
        topic="orders",
        partition=0,
        offset=offset,
        key=Blob.of(key) if key is not None else None,
        value=Blob.of(value) if value is not None else None,
        timestamp_ms=1_700_000_000_000,
        headers=[Header(n.decode(), Blob.of(v) if v is not None else None) for n, v in headers],
        topic_id="Fw0ygiNXSnSO1Fhrqe3sDw",
    )
    return OutgoingRecord(idempotency_key=f"courier/g/orders/0/{offset}", record=record)


async def recovered(pg_pool: asyncpg.Pool, table: str) -> list[RecordBytes]:
    """Each row's key, value and headers as bytes, by offset, read with the documented queries."""
    headers: dict[int, list[HeaderBytes]] = {}
    for h in await pg_pool.fetch(RECOVER_HEADERS.format(table=table) + " ORDER BY 1, 2"):
        headers.setdefault(h["offset"], []).append((h["name"], h["value"]))
    rows = await pg_pool.fetch(RECOVER_RECORDS.format(table=table) + ' ORDER BY "offset"')
    return [(r["key"], r["value"], headers.get(r["offset"], [])) for r in rows]


@pytest.mark.parametrize("policy", ["text", "bytes"])
async def test_every_record_is_stored_with_its_exact_bytes(
    open_sink: Opener, pg_pool: asyncpg.Pool, unique: str, policy: str
) -> None:
    sink = await open_sink(non_json_values=policy)
    batch = [awkward_record(i, *fields) for i, fields in enumerate(AWKWARD)]

    assert await sink.write(batch) == f"{len(AWKWARD)} rows inserted"
    assert await recovered(pg_pool, f'"courier_test_{unique}"') == AWKWARD
    assert await sink.write(batch) == "0 rows inserted (already present)"
    assert await pg_pool.fetchval(f'SELECT count(*) FROM "courier_test_{unique}"') == len(AWKWARD)

    rows = await pg_pool.fetch(f'SELECT * FROM "courier_test_{unique}" ORDER BY "offset"')
    assert [(r["key"], r["key_bytes"]) for r in rows[:3]] == [
        (None, b"\xff\xfe binary"),
        (None, b"nul\x00key"),
        ("k3", None),
    ]
    assert json.loads(rows[0]["value"]) == {"total": 1}  # JSON is queryable as jsonb too
    assert rows[3]["value"] is None  # jsonb cannot hold \u0000; value_text has it
    assert json.loads(rows[6]["value"]) == [1, 2]
    assert json.loads(rows[2]["headers"])[0] == {
        "name": "nul",
        "value": "AAE=",
        "value_encoding": "base64",
    }


async def test_table_made_before_key_bytes_is_migrated(
    open_sink: Opener, pg_pool: asyncpg.Pool, unique: str
) -> None:
    table = f'"courier_test_{unique}"'
    await pg_pool.execute(
        f"""CREATE TABLE {table} (
            "topic" text NOT NULL, "partition" integer NOT NULL, "offset" bigint NOT NULL,
            "key" text, "value" jsonb, "value_text" text, "value_bytes" bytea,
            "timestamp" timestamptz, "headers" jsonb, "idempotency_key" text NOT NULL,
            "exported_at" timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY ("topic", "partition", "offset"))"""
    )
    await pg_pool.execute(
        f'INSERT INTO {table} (topic, partition, "offset", key, idempotency_key) '
        "VALUES ('orders', 0, 0, 'old', 'courier/g/orders/0/0')"
    )
    sink = await open_sink()

    assert await sink.write([awkward_record(1, *AWKWARD[0])]) == "1 row inserted"
    assert await recovered(pg_pool, table) == [(b"old", None, []), AWKWARD[0]]


async def test_data_the_table_refuses_is_permanent(
    open_sink: Opener, pg_pool: asyncpg.Pool, unique: str
) -> None:
    await open_sink()
    await pg_pool.execute(
        f'ALTER TABLE "courier_test_{unique}" ADD CONSTRAINT short_key CHECK (length(key) < 5)'
    )
    sink = await open_sink(create_table=False)
    with pytest.raises(PermanentExportError) as caught:
        await sink.write([outgoing(12345)])

    assert "SQLSTATE 23514" in caught.value.reason


async def test_custom_conflict_key_and_schema(
    open_sink: Opener, pg_pool: asyncpg.Pool, unique: str
) -> None:
    table = f"courier_s_{unique}.exports"
    sink = await open_sink(table=table, conflict_key=["idempotency_key"])

    assert await sink.write([outgoing(1)]) == "1 row inserted"
    assert await sink.write([outgoing(1)]) == "0 rows inserted (already present)"
    assert await pg_pool.fetchval(f'SELECT count(*) FROM "courier_s_{unique}"."exports"') == 1


async def test_unreachable_server_is_retryable() -> None:
    config = PostgresConfig(
        name="pg",
        kind="postgres",
        dsn="postgresql://courier:courier@127.0.0.1:9/courier",
        table="t",
    )
    with pytest.raises(RetryableExportError) as caught:
        await PostgresDestination(config).open()

    assert "courier:courier" not in caught.value.reason


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        (
            "not-the-password",
            'password authentication failed for user "courier_secure" (SQLSTATE 28P01); '
            "check the user and password in the dsn",
        ),
        (None, None),
    ],
    ids=["wrong-password", "right-password"],
)
async def test_opening_with_wrong_credentials_says_what_to_check(
    stack_settings: Any,
    pg_pool: asyncpg.Pool,
    unique: str,
    password: str | None,
    expected: str | None,
) -> None:
    from courier_devtools.stack.postgres import SECURE_PASSWORD, secure_dsn

    table = f"courier_secure_{unique}"
    config = PostgresConfig.model_validate(
        {
            "name": "pg",
            "kind": "postgres",
            "dsn": secure_dsn(stack_settings, password or SECURE_PASSWORD),
            "table": table,
        }
    )
    destination = PostgresDestination(config)
    try:
        if expected is None:
            await destination.open()
            return
        with pytest.raises(RetryableExportError) as err:
            await destination.open()
        assert err.value.reason == f"preparing table {table}: {expected}"
    finally:
        await destination.close()
        await pg_pool.execute(f"DROP TABLE IF EXISTS {table}")
