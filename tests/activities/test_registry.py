"""The registry builds every kind from config, and config errors name the field at fault."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from activities.base import Destination
from activities.files import FileDestination
from activities.kafka import KafkaDestination
from activities.postgres import PostgresDestination
from activities.registry import KINDS, AnyDestinationConfig, create_destination
from activities.rest import RestDestination

ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyDestinationConfig)

VALID: dict[str, dict[str, Any]] = {
    "rest": {"url": "http://api.test/orders/{key}"},
    "file": {"path": "/tmp/courier-out.jsonl"},
    "postgres": {"dsn": "postgresql://u:p@127.0.0.1/db", "table": "exports.orders"},
    "kafka": {"bootstrap_servers": "127.0.0.1:9092", "topic": "orders-out"},
}


def errors_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        ADAPTER.validate_python(data)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in caught.value.errors()]


def test_each_kind_is_registered_under_its_own_literal() -> None:
    assert set(KINDS) == {"rest", "file", "postgres", "kafka"}
    for name, config in KINDS.items():
        assert typing.get_args(config.model_fields["kind"].annotation) == (name,)


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("rest", RestDestination),
        ("file", FileDestination),
        ("postgres", PostgresDestination),
        ("kafka", KafkaDestination),
    ],
)
def test_create_destination_builds_each_kind(kind: str, cls: type) -> None:
    config = ADAPTER.validate_python({"name": f"d-{kind}", "kind": kind, **VALID[kind]})

    destination = create_destination(config)

    assert isinstance(destination, cls)
    assert isinstance(destination, Destination)
    assert config.task_queue == f"courier-dest-d-{kind}"


def test_unknown_kind_names_kind_and_the_known_ones() -> None:
    [(_loc, msg)] = errors_of({"name": "x", "kind": "smtp"})
    assert "'kind'" in msg and "'smtp'" in msg
    assert "'rest', 'file', 'postgres', 'kafka'" in msg


def test_bad_url_template_names_the_destination_field_and_placeholder() -> None:
    [(loc, msg)] = errors_of({"name": "x", "kind": "rest", "url": "http://a.test/{id}"})
    assert loc == "rest"
    assert "destination x, url: mapping `id` reads 'id', which a record does not have" in msg


@pytest.mark.parametrize(
    ("fields", "where", "words"),
    [
        ({"url": "ftp://a.test/"}, "rest.url", "http"),
        ({"url": "http://a.test/{key"}, "rest", "url: '{' at position 15 is never closed"),
        ({"retry_statuses": ["6xx"]}, "rest.retry_statuses", "'6xx'"),
        ({"success_statuses": [200], "retry_statuses": [200]}, "rest", "both"),
        ({"read_timeout": "soon"}, "rest.read_timeout", "duration"),
        ({"body": "xml"}, "rest.body.named", "'raw' or 'json'"),
    ],
)
def test_rest_config_errors(fields: dict[str, Any], where: str, words: str) -> None:
    data = {"name": "x", "kind": "rest", **VALID["rest"], **fields}
    [(loc, msg)] = errors_of(data)
    assert loc == where
    assert words in msg


@pytest.mark.parametrize(
    ("fields", "where", "words"),
    [
        ({"table": "orders; drop table x"}, "postgres.table", "not a table name"),
        ({"table": "a.b.c"}, "postgres.table", "not a table name"),
        ({"conflict_key": ["nope"]}, "postgres", "conflict_key: unknown column"),
        ({"non_json_values": "drop"}, "postgres.non_json_values", "'text', 'bytes' or 'fail'"),
    ],
)
def test_postgres_config_errors(fields: dict[str, Any], where: str, words: str) -> None:
    data = {"name": "x", "kind": "postgres", **VALID["postgres"], **fields}
    [(loc, msg)] = errors_of(data)
    assert loc == where
    assert words in msg


def test_file_config_errors(tmp_path: Path) -> None:
    [(loc, msg)] = errors_of({"name": "x", "kind": "file", "path": tmp_path, "fsync": "sometimes"})
    assert loc == "file.fsync"
    [(loc, msg)] = errors_of({"name": "x", "kind": "file"})
    assert loc == "file.path"
    assert msg == "Field required"
