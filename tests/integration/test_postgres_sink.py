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
    assert json.loads(first["value"]) == {"total": 42}
    assert first["value_text"] is None and first["value_bytes"] is None
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


async def test_value_postgres_cannot_take_is_permanent(open_sink: Opener) -> None:
    sink = await open_sink()
    with pytest.raises(PermanentExportError) as caught:
        await sink.write([outgoing(1, b'{"a": "\\u0000"}')])  # valid JSON, not valid jsonb

    assert "SQLSTATE 22" in caught.value.reason


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
