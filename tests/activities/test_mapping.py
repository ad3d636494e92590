"""Mappings without a network: the record as data, templates, each kind's mapped output, the
errors per record and at config time, and ``courier map --record``."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from activities.errors import PermanentExportError
from activities.files import FileConfig, FileDestination, record_line
from activities.mapping import Expression, MappingError, Template, record_data
from activities.postgres import MappedColumns, PostgresConfig, create_table_sql, insert_sql
from activities.rest import RestConfig, RestDestination
from courier.cli import app
from courier.config.model import ConfigError, parse_config
from workflows.types import Blob, Header, KafkaRecord, OutgoingRecord

runner = CliRunner()


def item(
    value: bytes | None = b'{"id": 7, "customer": "c/1", "qty": 2, "price": 1.5}',
    *,
    key: bytes | None = b"order-7",
    headers: list[tuple[str, bytes]] | None = None,
) -> OutgoingRecord:
    return OutgoingRecord(
        idempotency_key="courier/g/orders@TID/0/7",
        record=KafkaRecord(
            topic="orders",
            topic_id="TID",
            partition=0,
            offset=7,
            key=None if key is None else Blob.of(key),
            value=None if value is None else Blob.of(value),
            timestamp_ms=1_700_000_000_123,
            headers=[Header(n, Blob.of(v)) for n, v in headers or []],
        ),
    )


# ------------------------------------------------------------------------- the record as data
def test_record_data_parses_json_values_and_keeps_text_and_bytes_readable() -> None:
    data = record_data(item(headers=[("trace", b"abc"), ("tag", b"a"), ("tag", b"b")]))
    assert data == {
        "key": "order-7",
        "key_encoding": "text",
        "value": {"id": 7, "customer": "c/1", "qty": 2, "price": 1.5},
        "value_encoding": "json",
        "headers": {"trace": "abc", "tag": ["a", "b"]},
        "topic": "orders",
        "topic_id": "TID",
        "partition": 0,
        "offset": 7,
        "timestamp": "2023-11-14T22:13:20.123Z",
        "timestamp_ms": 1_700_000_000_123,
        "idempotency_key": "courier/g/orders@TID/0/7",
    }
    text = record_data(item(b"plain text", key=None))
    assert (text["value"], text["value_encoding"], text["key"], text["key_encoding"]) == (
        "plain text",
        "text",
        None,
        None,
    )
    binary = record_data(item(b"\xff\x00"))
    assert (binary["value"], binary["value_encoding"]) == ("/wA=", "base64")


def test_expression_errors_name_the_field_and_the_expression() -> None:
    total = Expression("value.qty * value.nope_price", "columns.total")
    with pytest.raises(MappingError) as caught:
        Expression("value.customer * 2", "body.mapping").evaluate(record_data(item()))
    assert caught.value.reason == (
        "body.mapping: mapping `value.customer * 2` failed: "
        "T2001: The left side of the * operator must evaluate to a number"
    )
    assert total.evaluate(record_data(item())) is None  # JSONata: a missing field is nothing
    with pytest.raises(MappingError, match="columns.total: mapping `value.qty \\* value.nope_"):
        total.require(record_data(item()))


def test_runaway_expression_is_stopped_and_fails_the_record() -> None:
    loop = Expression("($f := function($n){ $f($n + 1) }; $f(0))", "body.mapping")
    with pytest.raises(MappingError, match="failed: D10"):
        loop.evaluate(record_data(item()))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("value.(", "does not compile: S0207: Unexpected end of expression"),
        ("", "the mapping is empty"),
        ("vlaue.id", "reads 'vlaue' (did you mean 'value'?), which a record does not have"),
    ],
)
def test_expression_that_does_not_compile_says_why(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        Expression(text, "f")


def test_template_fills_pieces_escapes_them_and_keeps_literal_braces() -> None:
    template = Template("/c/{value.customer}/o/{value.id}{{x}}/{ {'a': 1}.a }", "url")
    data = record_data(item())
    assert template.render(data) == "/c/c/1/o/7{x}/1"
    assert template.render(data, lambda s: s.replace("/", "%2F")) == "/c/c%2F1/o/7{x}/1"
    with pytest.raises(MappingError, match="url: mapping `value.nope` produced nothing"):
        Template("/{value.nope}", "url").render(data)
    with pytest.raises(MappingError, match="produced an object"):
        Template("/{value}", "url").render(data)
    null_key = record_data(item(key=None))
    assert Template("/{key}", "url").render(null_key, empty_if_null=frozenset({"key"})) == "/"
    for bad, words in (("/{key", "never closed"), ("/}", "unmatched '}'")):
        with pytest.raises(ValueError, match=words):
            Template(bad, "url")


# ------------------------------------------------------------------------------- each kind
def rest(**fields: Any) -> RestDestination:
    return RestDestination(RestConfig(name="api", kind="rest", **fields))


def test_rest_mapping_shapes_url_headers_and_body() -> None:
    destination = rest(
        url="http://api.test/c/{value.customer}/orders/{value.id}?k={key}",
        headers={"X-Qty": "{value.qty}", "Authorization": "Bearer t"},
        body={"mapping": '{"orderId": value.id, "total": value.qty * value.price}'},
    )
    request = destination.build_request(None, item())
    assert str(request.url) == "http://api.test/c/c%2F1/orders/7?k=order-7"
    assert request.headers["X-Qty"] == "2"
    assert request.headers["Authorization"] == "Bearer t"
    assert request.headers["Idempotency-Key"] == "courier/g/orders@TID/0/7"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"orderId": 7, "total": 3}


def test_rest_text_template_body_and_content_type() -> None:
    plain = rest(url="http://api.test/", body={"template": "order {value.id} for {key}"})
    request = plain.build_request(None, item())
    assert request.content == b"order 7 for order-7"
    assert request.headers["Content-Type"] == "text/plain; charset=utf-8"
    csv = rest(
        url="http://api.test/", body={"template": "{value.id},{key}"}, content_type="text/csv"
    )
    assert csv.build_request(None, item()).headers["Content-Type"] == "text/csv"


def test_rest_default_is_unchanged_envelope_and_legacy_placeholders() -> None:
    destination = rest(url="http://api.test/{topic}/{partition}/{offset}/{key}")
    request = destination.build_request(None, item(key=b"a b/c"))
    assert str(request.url) == "http://api.test/orders/0/7/a%20b%2Fc"
    assert json.loads(request.content)["value_encoding"] == "json"
    assert str(destination.build_request(None, item(key=None)).url) == "http://api.test/orders/0/7/"
    raw = rest(url="http://api.test/", body="raw")
    assert raw.build_request(None, item(b"x")).headers["Content-Type"] == "application/json"


async def test_rest_failing_mapping_fails_only_that_record_permanently() -> None:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(200)

    destination = RestDestination(
        RestConfig(name="api", kind="rest", url="http://api.test/o/{value.id}"),
        transport=httpx.MockTransport(handler),
    )
    await destination.open()
    try:
        assert await destination.write([item()]) == "HTTP 200"
        with pytest.raises(PermanentExportError) as caught:
            await destination.write([item(b'{"no_id": 1}')])
    finally:
        await destination.close()
    assert caught.value.reason == (
        "orders/0/7: url: mapping `value.id` produced nothing: a field it reads is missing or null"
    )
    assert sent == ["/o/7"]


def test_header_template_with_a_line_break_fails_the_record() -> None:
    destination = rest(url="http://api.test/", headers={"X-Note": "{value.note}"})
    with pytest.raises(MappingError, match="headers.X-Note: .* line break"):
        destination.build_request(None, item(b'{"note": "a\\r\\nInjected: 1"}'))


async def test_file_line_mapping_keeps_the_idempotency_key(tmp_path: Path) -> None:
    config = FileConfig(
        name="f", kind="file", path=tmp_path / "o.jsonl", line='{"id": value.id, "k": key}'
    )
    destination = FileDestination(config)
    await destination.open()
    try:
        assert await destination.write([item()]) == "1 line written"
        assert await destination.write([item()]) == "0 lines written (already present)"
    finally:
        await destination.close()
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": 7, "k": "order-7", "idempotency_key": "courier/g/orders@TID/0/7"}
    ]
    assert record_line(item()).startswith(b'{"topic":"orders"')  # no mapping: the envelope


async def test_file_line_that_is_not_an_object_fails_the_batch_and_writes_nothing(
    tmp_path: Path,
) -> None:
    destination = FileDestination(
        FileConfig(name="f", kind="file", path=tmp_path / "o.jsonl", line="value")
    )
    await destination.open()
    try:
        with pytest.raises(PermanentExportError) as caught:
            await destination.write([item(), item(b'"just text"')])
    finally:
        await destination.close()
    assert caught.value.reason == (
        'orders/0/7: line: mapping `value` gave str "just text"; a line must be an object'
    )
    assert (tmp_path / "o.jsonl").read_text() == ""  # the batch is split and retried by export


def postgres(columns: dict[str, Any], **fields: Any) -> PostgresConfig:
    return PostgresConfig(
        name="pg",
        kind="postgres",
        dsn="postgresql://x@h/db",
        table="s.t",
        columns=columns,
        **fields,
    )


def test_postgres_columns_convert_to_their_types() -> None:
    config = postgres(
        {
            "id": {"type": "bigint", "mapping": "value.id"},
            "total": {"type": "numeric", "mapping": "value.qty * value.price"},
            "ratio": {"type": "double precision", "mapping": "value.price"},
            "paid": {"type": "boolean", "mapping": "value.qty > 1"},
            "customer": {"type": "text", "mapping": "value.customer"},
            "doc": {"type": "jsonb", "mapping": "value"},
            "at": {"type": "timestamptz", "mapping": "timestamp"},
            "at_ms": {"type": "timestamptz", "mapping": "timestamp_ms"},
            "note": {"type": "text", "mapping": "value.note", "nullable": True},
        }
    )
    row = MappedColumns(config).row(item())
    at = datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert row == {
        "id": 7,
        "total": Decimal("3"),
        "ratio": 1.5,
        "paid": True,
        "customer": "c/1",
        "doc": '{"id": 7, "customer": "c/1", "qty": 2, "price": 1.5}',
        "at": at,
        "at_ms": at,
        "note": None,
        "idempotency_key": "courier/g/orders@TID/0/7",
    }
    statements = create_table_sql(config)
    assert '"id" bigint NOT NULL' in statements[1] and '"note" text,' in statements[1]
    assert 'PRIMARY KEY ("idempotency_key")' in statements[1]
    sql = insert_sql(config)
    assert "c5::jsonb" in sql and "$6::text[]" in sql and 'ON CONFLICT ("idempotency_key")' in sql


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ({"type": "bigint", "mapping": "value.customer"}, None, "gave 'c/1', not a number"),
        ({"type": "integer", "mapping": "value.price"}, None, "gave 1.5, not a whole number"),
        ({"type": "integer", "mapping": "value.big"}, b'{"big": 3000000000}', "out of range"),
        ({"type": "boolean", "mapping": "value.id"}, None, "gave 7, not true or false"),
        ({"type": "text", "mapping": "value"}, None, "gave an object"),
        ({"type": "timestamptz", "mapping": "value.customer"}, None, "not an ISO 8601"),
        ({"type": "text", "mapping": "value.nope"}, None, "produced nothing"),
    ],
)
def test_postgres_value_that_does_not_fit_fails_the_record_naming_the_column(
    column: dict[str, Any], value: bytes | None, words: str
) -> None:
    mapped = MappedColumns(postgres({"c": column}))
    record = item(value) if value is not None else item()
    with pytest.raises(PermanentExportError) as caught:
        mapped.arrays([record])
    assert caught.value.reason.startswith("orders/0/7: columns.c: mapping `")
    assert words in caught.value.reason


# ---------------------------------------------------------------------------- config errors
def config_with(destination: dict[str, Any]) -> dict[str, Any]:
    return {"kafka": {"topics": ["t"]}, "destinations": [destination]}


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        (
            {"name": "orders-api", "kind": "rest", "url": "http://a/", "body": {"mapping": "a +"}},
            "destinations[0]: destination orders-api, body.mapping: mapping `a +` does not "
            "compile: S0207: Unexpected end of expression",
        ),
        (
            {"name": "api", "kind": "rest", "url": "http://a/", "headers": {"X": "{value.(}"}},
            "destinations[0]: destination api, headers.X: mapping `value.(` does not compile",
        ),
        (
            {"name": "arch", "kind": "file", "path": "/tmp/x", "line": "{"},
            "destinations[0]: destination arch, line: mapping `{` does not compile",
        ),
        (
            {
                "name": "wh",
                "kind": "postgres",
                "dsn": "postgresql://h/db",
                "table": "t",
                "columns": {"a": {"type": "text", "mapping": "value.]"}},
            },
            "destinations[0]: destination wh, columns.a: mapping `value.]` does not compile",
        ),
        (
            {
                "name": "wh",
                "kind": "postgres",
                "dsn": "postgresql://h/db",
                "table": "t",
                "columns": {"a": {"type": "money", "mapping": "value"}},
            },
            "destinations[0].columns.a.type: Input should be",
        ),
        (
            {
                "name": "wh",
                "kind": "postgres",
                "dsn": "postgresql://h/db",
                "table": "t",
                "columns": {"idempotency_key": {"type": "text", "mapping": "key"}},
            },
            "is a column Courier fills itself",
        ),
        (
            {"name": "api", "kind": "rest", "url": "http://a/", "body": {"mapping": "x"}},
            "reads 'x', which a record does not have",
        ),
        (
            {"name": "api", "kind": "rest", "url": "http://a/", "headers": {"X": '{"a":1}'}},
            'headers.X: mapping `"a":1` does not compile: Invalid syntax: S0201: Syntax '
            "error: Colon (literal braces are written {{ and }})",
        ),
        (
            {"name": "api", "kind": "rest", "url": "http://{value.host}/orders"},
            "destinations[0].url: the scheme, host and port must be written out",
        ),
        (
            {"name": "api", "kind": "rest", "url": "http://a/", "headers": {"X": '{ {"a":1} }'}},
            'headers.X: the piece { {"a":1} } gives an object for every record',
        ),
    ],
)
def test_mapping_config_errors_name_destination_and_field(
    destination: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with(destination), environ={})
    assert expected in str(caught.value)


# ----------------------------------------------------------------------------- courier map
def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_courier_map_prints_the_request_a_record_would_make(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "c.yaml",
        json.dumps(
            config_with(
                {
                    "name": "api",
                    "kind": "rest",
                    "method": "PUT",
                    "url": "http://api.test/o/{value.id}",
                    "headers": {"X-Trace": "{headers.trace}"},
                    "body": {"mapping": '{"id": value.id, "who": key}'},
                }
            )
        ),
    )
    record = write(
        tmp_path, "r.json", {"key": "k1", "value": {"id": 5}, "headers": {"trace": "t-1"}}
    )
    result = runner.invoke(app, ["map", "-d", "api", "--record", str(record), "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "# api (rest) would receive:\n"
        "PUT http://api.test/o/5\n"
        "Host: api.test\n"
        "X-Trace: t-1\n"
        "Idempotency-Key: courier/courier/example@AAAAAAAAAAAAAAAAAAAAAA/0/0\n"
        "Content-Type: application/json\n"
        "Content-Length: 22\n"
        "\n"
        '{"id": 5, "who": "k1"}\n'
    )
    failing = write(tmp_path, "bad.json", {"key": "k1", "value": {"other": 1}})
    bad = runner.invoke(app, ["map", "-d", "api", "--record", str(failing), "-c", str(config)])
    assert bad.exit_code == 1
    assert bad.output == (
        "error: api: url: mapping `value.id` produced nothing: a field it reads is missing or "
        "null\n"
    )


def test_courier_map_json_row_and_bad_input(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "c.yaml",
        json.dumps(
            config_with(
                {
                    "name": "wh",
                    "kind": "postgres",
                    "dsn": "postgresql://h/db",
                    "table": "t",
                    "columns": {"n": {"type": "bigint", "mapping": "value.n"}},
                }
            )
        ),
    )
    record = write(tmp_path, "r.json", {"value": {"n": 3}, "offset": 4})
    result = runner.invoke(
        app, ["map", "-d", "wh", "--record", str(record), "--json", "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "destination": "wh",
        "kind": "postgres",
        "table": "t",
        "row": {"n": 3, "idempotency_key": "courier/courier/example@AAAAAAAAAAAAAAAAAAAAAA/0/4"},
    }
    unknown = write(tmp_path, "u.json", {"vale": 1})
    result = runner.invoke(app, ["map", "-d", "wh", "--record", str(unknown), "-c", str(config)])
    assert result.exit_code == 2
    assert "unknown field(s) vale" in result.output
    neither = runner.invoke(app, ["map", "-d", "wh", "-c", str(config)])
    assert neither.exit_code == 2
    assert "give exactly one of --record FILE or --from TOPIC/PARTITION/OFFSET" in neither.output
    bad_from = runner.invoke(app, ["map", "-d", "wh", "--from", "orders-0", "-c", str(config)])
    assert bad_from.exit_code == 2 and "write TOPIC/PARTITION/OFFSET" in bad_from.output


def test_an_expression_evaluates_and_is_freed_on_any_thread() -> None:
    import gc
    import threading

    expression = Expression("value.id + 1", "f")
    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(expression.evaluate({"value": {"id": 1}}))
    )
    worker.start()
    worker.join()
    assert results == [2] and expression.evaluate({"value": {"id": 2}}) == 3
    freed = threading.Thread(target=lambda: [Expression("value.id", "f") for _ in range(3)])
    freed.start()
    freed.join()
    gc.collect()  # nothing jsonatapy made is freed on a thread other than its own


def test_timestamps_are_exact_and_out_of_range_ones_are_null() -> None:
    from activities.mapping import timestamp_text

    assert timestamp_text(253_402_300_799_999) == "9999-12-31T23:59:59.999Z"
    assert timestamp_text(253_402_300_800_000) is None  # past year 9999
    assert timestamp_text(2**63 - 1) is None
    assert timestamp_text(-1) is None
