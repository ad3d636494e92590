"""PostgreSQL destination: one row per record, inserted with ``ON CONFLICT DO NOTHING``.

A batch is one ``INSERT ... SELECT FROM unnest(...)`` statement, so a repeated export of the
same records (a Temporal retry) inserts nothing. The conflict key is the record's identity
``(topic, topic_id, partition, "offset")`` (the primary key) unless ``conflict_key`` names
other columns; with ``create_table`` a unique index on the key is created if none exists.

Every valid record is stored, and its exact key, value and header bytes can be read back:

- ``key`` text holds a key that is UTF-8 without NUL (``text`` cannot hold NUL); any other key
  goes, raw, to ``key_bytes`` bytea. At most one is set; both are NULL for a null key. Bytes:
  ``coalesce(key_bytes, convert_to(key, 'UTF8'))``.
- ``value_text`` / ``value_bytes`` hold the value's exact bytes (at most one is set; both are
  NULL for a null value): ``value_text`` for JSON, and for other UTF-8 text without NUL under
  ``non_json_values: text``; ``value_bytes`` for everything else. ``fail`` fails a record whose
  value is not JSON. Bytes: ``coalesce(value_bytes, convert_to(value_text, 'UTF8'))``.
- ``value`` jsonb additionally holds a JSON value for queries when jsonb can (not a ``\\u0000``
  escape, a lone surrogate escape or a number outside ``numeric``'s range). jsonb is a parsed
  form: it drops whitespace, duplicate keys and key order and respells numbers and escapes, so
  it is the value's meaning, not its bytes; that is why JSON values are kept as text too, at
  the cost of storing them twice.
- ``headers`` jsonb is the envelope's list (``activities.encoding``), in order; a name or value
  that is not UTF-8 or contains NUL is base64 (``"name_encoding"``/``"value_encoding"``).

Rows written before ``key_bytes`` existed hold non-UTF-8 keys base64 in ``key`` and JSON values
in ``value`` only. A conflict key on a nullable column (``key``, ``value``, ...) does not
deduplicate rows where it is NULL: unique indexes treat NULLs as distinct.

With ``columns`` the table has the declared columns instead, each filled by a JSONata mapping
(``activities.mapping``) and converted to its type, plus ``idempotency_key`` (the default
conflict key) and ``exported_at``; a mapping that fails for a record, a value of the wrong type
or nothing for a column that is not ``nullable`` fails that record, naming the column.

Errors: data problems (SQLSTATE classes 22 data exception, 23 integrity violation, 54 program
limit exceeded, e.g. a value too large) are permanent; everything else (lost connections,
server shutting down, missing table or permission, which an operator can fix) is retried.
Table names are quoted as written, so ``Orders`` and ``orders`` are different tables.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from activities.base import DestinationConfig, Pace, batch_size_field, no_pace
from activities.encoding import as_read, headers_list
from activities.errors import PermanentExportError, RetryableExportError
from activities.mapping import Expression, MappingError, check_mappings, record_data
from workflows.types import Blob, OutgoingRecord

COLUMNS = (
    "topic",
    "topic_id",
    "partition",
    "offset",
    "key",
    "key_bytes",
    "value",
    "value_text",
    "value_bytes",
    "timestamp",
    "headers",
    "idempotency_key",
    "exported_at",
)
DEFAULT_CONFLICT_KEY = ["topic", "topic_id", "partition", "offset"]
MAPPED_CONFLICT_KEY = ["idempotency_key"]
MAPPED_EXTRA_COLUMNS = ("idempotency_key", "exported_at")
"""Columns a table with declared ``columns`` always has, besides them."""
ColumnType = Literal[
    "text", "integer", "bigint", "numeric", "double precision", "boolean", "jsonb", "timestamptz"
]
_IDENT = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"
_PERMANENT_SQLSTATE_CLASSES = ("22", "23", "54")
_JSONB_REFUSED = re.compile("[\0\ud800-\udfff]")
_DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


class ColumnConfig(BaseModel):
    """One column of a table with declared ``columns``: its type and the mapping that fills it."""

    model_config = ConfigDict(extra="forbid")

    type: ColumnType = Field(description="PostgreSQL type of the column.")
    mapping: str = Field(
        description="JSONata expression over the record (see the README) giving the value, "
        "e.g. value.customer.id; converted to the type (a number for integer/bigint/numeric/"
        "double precision, true/false for boolean, ISO 8601 text or epoch milliseconds for "
        "timestamptz, any JSON for jsonb); a value that does not fit fails the record."
    )
    nullable: bool = Field(
        default=False,
        description="Store NULL when the mapping gives nothing (or null); otherwise such a "
        "record fails, naming the column. Also sets NOT NULL on a created table.",
    )


class PostgresConfig(DestinationConfig):
    """A PostgreSQL table that receives one row per record."""

    # A whole default range (ingest.max_records) in one activity, one transaction: each
    # activity costs Temporal about as much as thousands of records cost this kind.
    batch_size: int = batch_size_field(5_000)

    def create(self) -> PostgresDestination:
        """The destination this config describes (not yet opened)."""
        return PostgresDestination(self)

    @classmethod
    def describe_preview(cls, shown: Mapping[str, Any]) -> list[str]:
        """The table of a preview and its row, one column a line."""
        row: Mapping[str, Any] = shown["row"]
        width = max(len(name) for name in row)
        lines = [f"# a row of {shown['table']}"]
        return lines + [
            f"{name.ljust(width)}  {json.dumps(value, ensure_ascii=False)}"
            for name, value in row.items()
        ]

    kind: Literal["postgres"] = Field(description="Always `postgres`.")
    dsn: str = Field(
        description="Connection string, e.g. postgresql://user:${PGPASSWORD}@host:5432/db."
    )
    table: str = Field(
        description="Target table, optionally schema-qualified (schema.table); quoted as "
        "written, so letter case matters."
    )
    create_table: bool = Field(
        default=True, description="Create the table (and schema) at start if missing."
    )
    non_json_values: Literal["text", "bytes", "fail"] = Field(
        default="text",
        description="Where values that are not JSON go: `text` (value_text, or value_bytes "
        "when not UTF-8), `bytes` (value_bytes), or `fail` the record permanently.",
    )
    conflict_key: list[str] | None = Field(
        default=None,
        description="Columns that identify a row for ON CONFLICT DO NOTHING; unset means "
        '(topic, topic_id, partition, "offset"): a record\'s identity, so a topic created '
        "again under the same name never collides with its old rows. A unique index on the "
        "key is created with the table if none exists.",
    )
    pool_size: int = Field(default=4, ge=1, le=100, description="Connections per worker process.")
    columns: dict[str, ColumnConfig] | None = Field(
        default=None,
        description="Columns of a mapped table, by name, each {type, mapping, nullable} "
        "(section destinations[].columns.NAME); the table also gets idempotency_key (the "
        "default conflict key) and exported_at. Unset stores Courier's fixed columns.",
    )

    @field_validator("table")
    @classmethod
    def _check_table(cls, table: str) -> str:
        if not re.fullmatch(rf"{_IDENT}(\.{_IDENT})?", table):
            raise ValueError(
                f"{table!r} is not a table name: use letters, digits and _ (not first), "
                "optionally schema.table"
            )
        return table

    @field_validator("conflict_key")
    @classmethod
    def _check_conflict_key(cls, key: list[str] | None) -> list[str] | None:
        if key is None:
            return None
        if not key:
            raise ValueError("must name at least one column (or be left unset)")
        if len(set(key)) != len(key):
            raise ValueError("lists a column twice")
        return key

    @field_validator("columns")
    @classmethod
    def _check_columns(
        cls, columns: dict[str, ColumnConfig] | None
    ) -> dict[str, ColumnConfig] | None:
        if columns is None:
            return None
        if not columns:
            raise ValueError("must declare at least one column (or be left unset)")
        for name in columns:
            if not re.fullmatch(_IDENT, name):
                raise ValueError(
                    f"{name!r} is not a column name: use letters, digits and _ (not first)"
                )
            if name in MAPPED_EXTRA_COLUMNS:
                raise ValueError(f"{name!r} is a column Courier fills itself; pick another name")
        return columns

    @model_validator(mode="after")
    def _key_and_mappings(self) -> PostgresConfig:
        known = table_columns(self)
        unknown = [c for c in self.conflict_key or [] if c not in known]
        if unknown:
            raise ValueError(f"conflict_key: unknown column(s) {unknown}; columns are {known}")
        if self.columns:
            check_mappings(
                self.name,
                {f"columns.{n}": ("expression", c.mapping) for n, c in self.columns.items()},
            )
        return self


def table_columns(config: PostgresConfig) -> list[str]:
    """The columns Courier writes to the destination's table."""
    if config.columns is None:
        return list(COLUMNS)
    return [*config.columns, *MAPPED_EXTRA_COLUMNS]


def conflict_key(config: PostgresConfig) -> list[str]:
    """The columns that identify a row (configured, or the default of the table's form)."""
    if config.conflict_key:
        return config.conflict_key
    return DEFAULT_CONFLICT_KEY if config.columns is None else MAPPED_CONFLICT_KEY


def _quote(ident: str) -> str:
    return '"' + ident + '"'


def qualified_table(table: str) -> str:
    """The table name quoted for SQL, e.g. ``"public"."orders"``."""
    return ".".join(_quote(part) for part in table.split("."))


def create_table_sql(config: PostgresConfig) -> list[str]:
    """Statements that create the table (and its schema and conflict index) if missing."""
    table = qualified_table(config.table)
    statements = []
    if "." in config.table:
        statements.append(f"CREATE SCHEMA IF NOT EXISTS {_quote(config.table.split('.')[0])}")
    if config.columns is not None:
        declared = [
            f"{_quote(n)} {c.type}{'' if c.nullable else ' NOT NULL'}"
            for n, c in config.columns.items()
        ]
        statements.append(
            f"""CREATE TABLE IF NOT EXISTS {table} (
            {", ".join(declared)},
            "idempotency_key" text NOT NULL,
            "exported_at" timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY ("idempotency_key")
        )"""
        )
        statements.append(_conflict_index_sql(config))
        return statements
    statements.append(
        f"""CREATE TABLE IF NOT EXISTS {table} (
            "topic" text NOT NULL,
            "topic_id" text NOT NULL DEFAULT '',
            "partition" integer NOT NULL,
            "offset" bigint NOT NULL,
            "key" text,
            "key_bytes" bytea,
            "value" jsonb,
            "value_text" text,
            "value_bytes" bytea,
            "timestamp" timestamptz,
            "headers" jsonb,
            "idempotency_key" text NOT NULL,
            "exported_at" timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY ("topic", "topic_id", "partition", "offset")
        )"""
    )
    # Tables made before topic IDs lack the column; records of old workflows store ''.
    statements.append(
        f"""ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "topic_id" text NOT NULL DEFAULT ''"""
    )
    # Tables made before key_bytes held binary keys as base64 text in "key".
    statements.append(f"""ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "key_bytes" bytea""")
    statements.append(_conflict_index_sql(config))
    return statements


def _conflict_index_sql(config: PostgresConfig) -> str:
    """ON CONFLICT needs a unique index on exactly the conflict key: make one unless the
    primary key (or another unique index) already is one."""
    table = qualified_table(config.table)
    key = conflict_key(config)
    digest = hashlib.sha1(f"{config.table}:{','.join(key)}".encode()).hexdigest()[:10]
    index = _quote(f"courier_conflict_{digest}")
    columns = ", ".join(_quote(c) for c in key)
    wanted = ", ".join("'" + c + "'" for c in sorted(key))
    return f"""DO $$ BEGIN
            IF NOT EXISTS (
                SELECT 1 FROM pg_index i
                WHERE i.indrelid = '{table}'::regclass AND i.indisunique
                  AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text)
                       FROM pg_attribute a
                       WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey))
                      = ARRAY[{wanted}]
            ) THEN
                CREATE UNIQUE INDEX {index} ON {table} ({columns});
            END IF;
        END $$"""


_ARRAY_TYPES: dict[str, str] = {"jsonb": "text"}
"""Array parameter type of a column type where it differs (jsonb travels as text, then cast)."""


def insert_sql(config: PostgresConfig) -> str:
    """The batch insert: one row per array element, conflicting rows skipped."""
    conflict = ", ".join(_quote(c) for c in conflict_key(config))
    if config.columns is not None:
        types = [c.type for c in config.columns.values()] + ["text"]
        names = [*config.columns, "idempotency_key"]
        aliases = [f"c{i}" for i in range(len(names))]
        selected = [
            a + ("::jsonb" if t == "jsonb" else "") for a, t in zip(aliases, types, strict=True)
        ]
        arrays = [f"${i + 1}::{_ARRAY_TYPES.get(t, t)}[]" for i, t in enumerate(types)]
        return f"""
        INSERT INTO {qualified_table(config.table)} ({", ".join(_quote(n) for n in names)})
        SELECT {", ".join(selected)}
        FROM unnest({", ".join(arrays)}) AS r({", ".join(aliases)})
        ON CONFLICT ({conflict}) DO NOTHING"""
    return f"""
        INSERT INTO {qualified_table(config.table)}
            ("topic", "topic_id", "partition", "offset", "key", "key_bytes", "value",
             "value_text", "value_bytes", "timestamp", "headers", "idempotency_key")
        SELECT t, ti, p, o, k, kb, v::jsonb, vt, vb, ts, h::jsonb, ik
        FROM unnest($1::text[], $2::text[], $3::integer[], $4::bigint[], $5::text[],
                    $6::bytea[], $7::text[], $8::text[], $9::bytea[], $10::timestamptz[],
                    $11::text[], $12::text[])
            AS r(t, ti, p, o, k, kb, v, vt, vb, ts, h, ik)
        ON CONFLICT ({conflict}) DO NOTHING"""


def row_columns(config: PostgresConfig, batch: Sequence[OutgoingRecord]) -> list[list[Any]]:
    """The column arrays of the insert; raises PermanentExportError per ``fail`` policy."""
    columns: list[list[Any]] = [[] for _ in range(12)]
    for item in batch:
        r = item.record
        key, value = as_read(r.key), as_read(r.value)  # as the topic's format reads them
        key_text: str | None = None
        key_bytes: bytes | None = None
        if key is not None and _storable_text(key):
            key_text = key.text
        elif key is not None:
            key_bytes = key.to_bytes()
        value_json: str | None = None
        value_text: str | None = None
        value_bytes: bytes | None = None
        if value is not None:
            fit = _json_fit(value.text) if _storable_text(value) else None
            if fit is not None:
                value_text = value.text
                value_json = value.text if fit == "jsonb" else None
            elif config.non_json_values == "fail":
                raise PermanentExportError(
                    f"value of {r.topic}/{r.partition}/{r.offset} is not JSON and table "
                    f"{config.table} takes only JSON values (non_json_values: fail): "
                    f"{_preview(value.text, value.base64)}"
                )
            elif config.non_json_values == "text" and _storable_text(value):
                value_text = value.text
            else:
                value_bytes = value.to_bytes()
        timestamp = (
            datetime.fromtimestamp(r.timestamp_ms / 1000, tz=UTC) if r.timestamp_ms >= 0 else None
        )
        headers = json.dumps(headers_list(r, nul_as_base64=True))
        row = (
            r.topic,
            r.topic_id or "",
            r.partition,
            r.offset,
            key_text,
            key_bytes,
            value_json,
            value_text,
            value_bytes,
            timestamp,
            headers,
            item.idempotency_key,
        )
        for column, cell in zip(columns, row, strict=True):
            column.append(cell)
    return columns


class MappedColumns:
    """The compiled mappings of a table with declared ``columns`` (compiled once per worker)."""

    def __init__(self, config: PostgresConfig) -> None:
        assert config.columns is not None
        self.config = config
        self.columns = [
            (name, column, Expression(column.mapping, f"columns.{name}"))
            for name, column in config.columns.items()
        ]

    def row(self, item: OutgoingRecord) -> dict[str, Any]:
        """One record's row, by column; MappingError when a column cannot be filled."""
        data = record_data(item)
        row: dict[str, Any] = {}
        for name, column, expression in self.columns:
            value = expression.evaluate(data)
            if value is None and not column.nullable:
                raise expression.error(
                    "produced nothing: a field it reads is missing or null "
                    "(set nullable: true to store NULL)"
                )
            row[name] = None if value is None else convert(value, column.type, expression)
        row["idempotency_key"] = item.idempotency_key
        return row

    def arrays(self, batch: Sequence[OutgoingRecord]) -> list[list[Any]]:
        """The column arrays of the insert; PermanentExportError naming a record that fails."""
        arrays: list[list[Any]] = [[] for _ in range(len(self.columns) + 1)]
        for item in batch:
            try:
                row = self.row(item)
            except MappingError as err:
                r = item.record
                raise PermanentExportError(
                    f"{r.topic}/{r.partition}/{r.offset}: {err.reason}", reached=False
                ) from err
            for array, cell in zip(arrays, row.values(), strict=True):
                array.append(cell)
        return arrays


_INT_RANGES = {"integer": 2**31, "bigint": 2**63}


def convert(value: Any, column_type: str, expression: Expression) -> Any:
    """A mapping's result as the Python value asyncpg sends for ``column_type``."""
    if column_type == "jsonb":
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict | list):
        kind = "an object" if isinstance(value, dict) else "a list"
        raise expression.error(f"gave {kind}, which a {column_type} column cannot hold")
    if column_type == "text":
        return value if isinstance(value, str) else json.dumps(value)
    if column_type == "boolean":
        if isinstance(value, bool):
            return value
        raise expression.error(f"gave {value!r}, not true or false")
    if column_type == "timestamptz":
        return _timestamp(value, expression)
    number = _number(value, column_type, expression)
    if column_type in _INT_RANGES:
        if isinstance(number, float) and not number.is_integer():
            raise expression.error(f"gave {value!r}, not a whole number")
        whole = int(number)
        limit = _INT_RANGES[column_type]
        if not -limit <= whole < limit:
            raise expression.error(f"gave {value!r}, out of range for {column_type}")
        return whole
    if column_type == "numeric":
        return Decimal(str(number))
    return float(number)


def _number(value: Any, column_type: str, expression: Expression) -> int | float | Decimal:
    if isinstance(value, bool):
        raise expression.error(f"gave {value!r}, not a number ({column_type})")
    if isinstance(value, int | float):
        return value
    try:
        number = Decimal(str(value).strip())
    except ArithmeticError:
        raise expression.error(f"gave {value!r}, not a number ({column_type})") from None
    if not number.is_finite():
        raise expression.error(f"gave {value!r}, not a finite number ({column_type})")
    return number if column_type == "numeric" else float(number)


def _timestamp(value: Any, expression: Expression) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise expression.error(f"gave {value!r}, out of range for epoch ms") from None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise expression.error(f"gave {value!r}, not an ISO 8601 timestamp") from None
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    raise expression.error(f"gave {value!r}, not a timestamp")


def _storable_text(blob: Blob) -> bool:
    """Whether PostgreSQL ``text`` can hold the blob (UTF-8 without NUL characters)."""
    return not blob.base64 and "\0" not in blob.text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _numeric_holds(number: Decimal) -> bool:
    """Whether PostgreSQL ``numeric`` (so jsonb) holds the number: at most 16383 digits after
    the point and 131072 before it."""
    exponent = number.as_tuple().exponent
    return isinstance(exponent, int) and -exponent <= 16383 and number.adjusted() <= 131071


def _json_fit(text: str) -> Literal["jsonb", "json"] | None:
    """``jsonb`` for JSON jsonb can hold, ``json`` for other JSON, None for not JSON.

    JSON is what ``encoding.parse_json_text`` accepts. jsonb refuses ``\\u0000``, lone
    surrogates (both appear in the parsed strings) and numbers beyond ``numeric``.
    """
    out_of_range = False

    def number(literal: str) -> Decimal:
        nonlocal out_of_range
        parsed = Decimal(literal)
        out_of_range = out_of_range or not _numeric_holds(parsed)
        return parsed

    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=number)
    except (ValueError, RecursionError):  # nesting too deep to check is stored as non-JSON
        return None
    if out_of_range:
        return "json"
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str) and _JSONB_REFUSED.search(item):
            return "json"
    return "jsonb"


def _preview(text: str, is_base64: bool) -> str:
    shown = text[:80] + ("…" if len(text) > 80 else "")
    return f"base64 {shown}" if is_base64 else repr(shown)


def _shown(cell: Any) -> Any:
    """A row's cell as JSON shows it (for previews)."""
    if isinstance(cell, datetime):
        return cell.isoformat()
    if isinstance(cell, Decimal):
        return str(cell)
    if isinstance(cell, bytes):
        return {"bytea_base64": base64.b64encode(cell).decode("ascii")}
    return cell


def _rows(n: int) -> str:
    return f"{n} row{'' if n == 1 else 's'}"


def classify_error(err: BaseException, what: str, *, hint: str | None = None) -> Exception:
    """Map an asyncpg/OS error to PermanentExportError (bad data) or RetryableExportError.

    ``hint`` (what to check) is appended to the reason.
    """
    then = f"; {hint}" if hint else ""
    if isinstance(err, asyncpg.PostgresError):
        sqlstate = getattr(err, "sqlstate", None) or ""
        message = " ".join(str(err).split())
        reason = f"{what}: {message} (SQLSTATE {sqlstate})" if sqlstate else f"{what}: {message}"
        if sqlstate[:2] in _PERMANENT_SQLSTATE_CLASSES:
            return PermanentExportError(reason + then)
        # Connection exceptions, server shutting down, out of resources.
        down = sqlstate[:2] in ("08", "53", "57")
        return RetryableExportError(reason + then, cause="unavailable" if down else "other")
    if isinstance(err, (OSError, asyncio.TimeoutError)):
        reachable = f"cannot reach PostgreSQL: {err or type(err).__name__}"
        return RetryableExportError(f"{what}: {reachable}{then}", cause="unavailable")
    return RetryableExportError(f"{what}: {type(err).__name__}: {err}{then}")


_OPEN_HINTS = {
    "28": "check the user and password in the dsn",
    "3D": "check the database name in the dsn",
    "42501": "grant the role CREATE on the schema, or create the table and set create_table: false",
    "53": "the server is out of resources (connections, disk, memory)",
}


def open_hint(err: BaseException) -> str | None:
    """What an operator should check when the destination does not open."""
    if isinstance(err, asyncpg.PostgresError):
        sqlstate = getattr(err, "sqlstate", None) or ""
        return _OPEN_HINTS.get(sqlstate) or _OPEN_HINTS.get(sqlstate[:2])
    if isinstance(err, (OSError, asyncio.TimeoutError)):
        return "check that PostgreSQL runs at the dsn's host and port"
    return None


class PostgresDestination:
    """Inserts records into a table through a pool shared by the worker process."""

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        self._pool: asyncpg.Pool | None = None
        self._insert = insert_sql(config)
        self._mapped = MappedColumns(config) if config.columns is not None else None

    def preview(self, item: OutgoingRecord) -> dict[str, object]:
        """The row this record would get, without inserting it (``courier map``)."""
        if self._mapped is not None:
            row = self._mapped.row(item)
        else:
            names = COLUMNS[: len(COLUMNS) - 1]  # exported_at is filled by the server
            row = dict(zip(names, (a[0] for a in row_columns(self.config, [item])), strict=True))
        return {"table": self.config.table, "row": {n: _shown(v) for n, v in row.items()}}

    async def open(self) -> None:
        """Create the connection pool and, with ``create_table``, the table."""
        try:
            self._pool = await asyncpg.create_pool(
                self.config.dsn, min_size=1, max_size=self.config.pool_size
            )
            if self.config.create_table:
                async with self._pool.acquire() as conn, conn.transaction():
                    # Workers starting together would race on CREATE ... IF NOT EXISTS.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext($1))", self.config.table
                    )
                    for statement in create_table_sql(self.config):
                        await conn.execute(statement)
            if self.config.columns is not None:
                missing = await self._missing_columns(self._pool)
        except _DATABASE_ERRORS as err:
            await self.close()
            what = f"preparing table {self.config.table}"
            raise classify_error(err, what, hint=open_hint(err)) from err
        if self.config.columns is not None and missing:
            await self.close()
            raise RetryableExportError(
                f"table {self.config.table} has no column(s) {', '.join(missing)} that the "
                "config declares (it was made before, with other columns): add them "
                "(ALTER TABLE … ADD COLUMN) or map to a new table"
            )

    async def _missing_columns(self, pool: asyncpg.Pool) -> list[str]:
        """Declared columns the existing table lacks ([] when the table does not exist yet)."""
        rows = await pool.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) "
            "AND attnum > 0 AND NOT attisdropped",
            qualified_table(self.config.table),
        )
        present = {r["attname"] for r in rows}
        if not present:
            return []
        return [c for c in table_columns(self.config) if c not in present]

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        """Insert the batch in one statement; return e.g. ``1 row inserted``."""
        if self._pool is None:
            raise RuntimeError("PostgresDestination.write() called before open()")
        if not batch:
            return "0 rows inserted"
        if self._mapped is not None:
            columns = self._mapped.arrays(batch)
        else:
            columns = row_columns(self.config, batch)
        await pace(len(batch))
        try:
            status = await self._pool.execute(self._insert, *columns)
        except _DATABASE_ERRORS as err:
            first = batch[0].record
            what = (
                f"insert of {first.topic}/{first.partition}/{first.offset}"
                if len(batch) == 1
                else f"insert of {len(batch)} records"
            )
            raise classify_error(err, f"{what} into {self.config.table} failed") from err
        inserted = int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"
        present = len(batch) - inserted
        if present and not inserted:
            return f"{_rows(inserted)} inserted (already present)"
        if present:
            return f"{_rows(inserted)} inserted, {present} already present"
        return f"{_rows(inserted)} inserted"
