"""Re-drive IDs and arguments, the record rendering of ``courier show``, failure grouping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from courier.config.model import parse_config
from courier.core.ids import (
    parse_workflow_id,
    range_workflow_id,
    redrive_prefix,
    redrive_workflow_id,
    workflow_id,
)
from courier.ops.failures import failed_query, generalise
from courier.ops.redrive import Start, parse_time
from courier.ops.show import Data, hexdump, ui_link
from workflows.types import Blob

IDENTITY = {"topic": "orders", "topic_id": "AbC-123", "partition": 2, "offset": 17}


def test_redrive_id_is_the_record_id_under_the_run() -> None:
    rid = redrive_workflow_id(group="g", run_id="r1", **IDENTITY)  # type: ignore[arg-type]
    assert rid == "courier/g/redrive/r1/orders@AbC-123/2/17"
    assert rid.startswith(redrive_prefix("g", "r1")) and rid.startswith(redrive_prefix("g"))
    assert not workflow_id(group="g", **IDENTITY).startswith(redrive_prefix("g"))  # type: ignore[arg-type]


@pytest.mark.parametrize("run_id", ["", "a/b", "x y", "-lead", "r" * 65, "ü"])
def test_run_ids_that_cannot_name_a_redrive(run_id: str) -> None:
    with pytest.raises(ValueError, match="is not valid"):
        redrive_workflow_id(group="g", run_id=run_id, **IDENTITY)  # type: ignore[arg-type]


def test_workflow_ids_parse_back() -> None:
    plain = parse_workflow_id(workflow_id(group="a/b", **IDENTITY))  # type: ignore[arg-type]
    assert (plain.group, plain.topic, plain.topic_id, plain.partition, plain.offset) == (
        "a/b",
        "orders",
        "AbC-123",
        2,
        17,
    )
    assert plain.redrive_run is None and not plain.is_range
    redriven = parse_workflow_id(redrive_workflow_id(group="g", run_id="r1", **IDENTITY))  # type: ignore[arg-type]
    assert (redriven.group, redriven.redrive_run) == ("g", "r1")
    ranged = parse_workflow_id(
        range_workflow_id(group="g", topic="orders", topic_id="X", partition=0, first=500)
    )
    assert ranged.is_range and ranged.offset == 500
    for bad in ("orders/0/17", "courier/g/orders/0/x", "other/g/o@x/0/1"):
        with pytest.raises(ValueError, match="is not a Courier workflow ID"):
            parse_workflow_id(bad)


def test_from_offset_and_time_arguments() -> None:
    assert Start.parse("orders:3:1500") == Start("orders", 3, 1500)
    for bad in ("orders", "orders:1", ":1:2", "orders:x:2"):
        with pytest.raises(ValueError, match="is not TOPIC:PARTITION:OFFSET"):
            Start.parse(bad)
    assert parse_time("2026-11-27T09:00:00Z") == datetime(2026, 11, 27, 9, tzinfo=UTC)
    assert parse_time("2026-11-27T10:00:00+01:00") == datetime(2026, 11, 27, 9, tzinfo=UTC)
    assert parse_time("2026-11-27T09:00") == datetime(2026, 11, 27, 9, tzinfo=UTC), "naive: UTC"
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")


def test_values_render_as_json_text_or_hex() -> None:
    assert Data.of(Blob.of(b'{"a":1}')) == Data("json", '{\n  "a": 1\n}')
    assert Data.of(Blob.of(b"plain")) == Data("text", "plain")
    assert Data.of(None) == Data("null", "")
    binary = Data.of(Blob.of(b"\xff\x00AB" * 5))
    assert binary.kind == "binary"
    assert binary.text.splitlines() == [
        "00000000  ff 00 41 42 ff 00 41 42 ff 00 41 42 ff 00 41 42  ..AB..AB..AB..AB",
        "00000010  ff 00 41 42                                      ..AB",
    ]
    assert hexdump(b"") == ""


def test_reasons_group_without_record_and_key() -> None:
    message = (
        "export of orders/0/17 to api failed: POST http://x/orders/order-17 answered 400: "
        "orders/0/17 rejected"
    )
    assert generalise(message, "orders/0/17", "order-17") == (
        "POST http://x/orders/{key} answered 400: {record} rejected"
    )


def test_failed_query_and_ui_link() -> None:
    config = parse_config(
        {
            "kafka": {"topics": ["t"]},
            "temporal": {"address": "temporal.internal:7233", "namespace": "prod ns"},
            "destinations": [{"name": "f", "kind": "file", "path": "/tmp/x"}],
        },
        environ={},
    )
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)
    query = failed_query(config, destination="f", since=timedelta(hours=1), now=now)
    assert "ExecutionStatus = 'Failed'" in query and "TaskQueue = 'courier-workflows'" in query
    assert "CloseTime >= '2026-11-27T11:00:00.000000Z'" in query
    assert "CourierDestination = 'f'" in query
    assert ui_link(config, "courier/g/t@x/0/1", "run") == (
        "http://temporal.internal:8233/namespaces/prod%20ns/workflows/courier%2Fg%2Ft%40x%2F0%2F1"
        "/run/history"
    )
