"""Record formats against a real schema registry (the stack's Apicurio Registry, through its
Confluent-compatible API): Avro records written by fastavro in the wire format reach the
destination as their decoded JSON, per record (inline) and in batch ranges (read back by
reference), and so do Protobuf records; a record whose schema ID the registry does not know
fails alone and reaches the dead-letter topic with the reason, while its neighbours are
exported; and a registry outage (a private registry, stopped and started again) holds the
records until it is back.
"""

from __future__ import annotations

import base64
import io
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest
from prometheus_client import REGISTRY
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from activities.formats import wire_format
from courier.config.model import CourierConfig
from courier_devtools.stack import StackSettings
from courier_devtools.stack.schema_registry import PrivateSchemaRegistry
from courier_devtools.topics import create_topic, produce
from ingest import dead_letter as dl
from tests.integration.harness import (
    courier_running,
    eventually,
    file_config,
    pipeline_config,
    statuses,
    wait_for_workflows,
)
from tests.integration.test_dead_letter import context, read_topic, with_dead_letter

pytestmark = pytest.mark.integration

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "test.courier",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
            {"name": "id", "type": "string"}]}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal",
                                    "precision": 9, "scale": 2}},
        {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["NEW", "PAID"]}},
    ],
}  # fmt: skip
UNKNOWN_ID = 987_654_321
BATCH = {"mode": "batch", "max_records": 50, "max_wait": "200ms"}
FAILED = WorkflowExecutionStatus.FAILED


async def register(
    url: str, subject: str, schema: dict[str, Any] | str, schema_type: str = "AVRO"
) -> int:
    """Register a schema through the registry's HTTP API; its ID."""
    text = schema if isinstance(schema, str) else json.dumps(schema)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{url}/subjects/{subject}/versions",
            json={"schema": text, "schemaType": schema_type},
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
    response.raise_for_status()
    return int(response.json()["id"])


def avro(schema_id: int, value: dict[str, Any]) -> bytes:
    """``value`` as a Confluent Avro serializer writes it: the wire format around Avro."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(ORDER), value)
    return wire_format(schema_id, out.getvalue())


def order(n: int) -> dict[str, Any]:
    from decimal import Decimal

    return {
        "id": n,
        "customer": {"id": f"c-{n}"},
        "note": None if n % 2 else f"note {n}",
        "amount": Decimal(f"{n}.25"),
        "state": "PAID",
    }


def order_json(n: int) -> dict[str, Any]:
    return {
        "id": n,
        "customer": {"id": f"c-{n}"},
        "note": None if n % 2 else f"note {n}",
        "amount": f"{n}.25",
        "state": "PAID",
    }


def with_formats(config: CourierConfig, registry_url: str) -> CourierConfig:
    topic = config.kafka.topics[0]
    data = config.model_dump(mode="json", exclude_none=True)
    data["kafka"]["formats"] = {topic: {"value": "avro"}}
    data["kafka"]["schema_registry"] = {"url": registry_url}
    return CourierConfig.model_validate(data)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("mode", ["per_record", "batch"])
async def test_avro_records_arrive_decoded_and_an_unknown_schema_fails_alone(
    stack: StackSettings, temporal_client: Client, unique: str, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "out.jsonl"
    dead = f"dead-{unique}"
    config = with_dead_letter(
        file_config(stack, unique, out, ingest=BATCH if mode == "batch" else None), dead
    )
    config = with_formats(config, stack.schema_registry_url)
    topic, bootstrap = config.kafka.topics[0], stack.kafka_bootstrap
    schema_id = await register(stack.schema_registry_url, f"{topic}-value", ORDER)
    await create_topic(bootstrap, topic, partitions=1)
    await create_topic(bootstrap, dead, partitions=1)
    bad = wire_format(UNKNOWN_ID, b"\x02")
    await produce(
        bootstrap,
        topic,
        [
            (b"k0", avro(schema_id, order(0))),
            (b"k1", bad),
            (b"k2", avro(schema_id, order(2))),
            (b"k3", avro(schema_id, order(3))),
        ],
    )

    async def exported() -> bool:
        return len(lines(out)) == 3

    async with courier_running(temporal_client, config):
        entries = await read_topic(bootstrap, dead, 1)
        await eventually(exported, timeout=60)
        if mode == "per_record":  # the record's own workflow fails; the others complete
            query = f"CourierTopic = '{topic}'"
            await wait_for_workflows(temporal_client, query, 1, status=FAILED)
            await wait_for_workflows(temporal_client, query, 3)

    written = {e["offset"]: e for e in lines(out)}
    assert sorted(written) == [0, 2, 3]
    for offset, entry in written.items():
        assert (entry["value"], entry["value_encoding"]) == (order_json(offset), "json")
        assert (entry["key"], entry["key_encoding"]) == (f"k{offset}", "text")
    assert len(entries) == 1 and entries[0].key == b"k1" and entries[0].value == bad
    found = context(entries[0])
    assert found[dl.CONNECT_OFFSET] == "1"
    assert found[dl.CONNECT_EXCEPTION_CLASS] == "PermanentExportError"
    assert found[dl.CONNECT_EXCEPTION_MESSAGE].endswith(
        f"value of {topic}/0/1: schema id {UNKNOWN_ID} not found in the registry at "
        f"{stack.schema_registry_url}"
    ), found[dl.CONNECT_EXCEPTION_MESSAGE]


PROTO = """
syntax = "proto3";
package test.courier;
message Order {
  int64 id = 1;
  message Customer { string id = 1; }
  Customer customer = 2;
  enum State { NEW = 0; PAID = 1; }
  State state = 3;
  bytes blob = 4;
}
"""


async def test_protobuf_records_arrive_decoded(
    stack: StackSettings, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    from google.protobuf import message_factory

    from activities.formats import compile_proto

    out = tmp_path / "out.jsonl"
    config = file_config(stack, unique, out)
    topic, bootstrap = config.kafka.topics[0], stack.kafka_bootstrap
    data = config.model_dump(mode="json", exclude_none=True)
    data["kafka"]["formats"] = {topic: {"value": "protobuf"}}
    data["kafka"]["schema_registry"] = {"url": stack.schema_registry_url}
    config = CourierConfig.model_validate(data)
    schema_id = await register(stack.schema_registry_url, f"{topic}-value", PROTO, "PROTOBUF")
    order_class = message_factory.GetMessageClass(
        compile_proto(PROTO, schema_id).pool.FindMessageTypeByName("test.courier.Order")
    )
    values = []
    for n in range(3):
        message = order_class(id=n, state=n % 2, blob=bytes([n, 255]))
        message.customer.id = f"c-{n}"
        values.append(wire_format(schema_id, b"\x00" + message.SerializeToString()))
    await create_topic(bootstrap, topic, partitions=1)
    await produce(bootstrap, topic, [(f"k{n}".encode(), v) for n, v in enumerate(values)])

    async def exported() -> bool:
        return len(lines(out)) == 3

    async with courier_running(temporal_client, config):
        await eventually(exported, timeout=60)
    states = ["NEW", "PAID"]
    assert {e["offset"]: e["value"] for e in lines(out)} == {
        n: {
            "id": str(n),  # proto3's JSON mapping: 64-bit integers as strings
            "customer": {"id": f"c-{n}"},
            "state": states[n % 2],
            "blob": base64.b64encode(bytes([n, 255])).decode(),
        }
        for n in range(3)
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def private_registry(stack: StackSettings, tmp_path: Path) -> AsyncIterator[Any]:
    """A registry of this test's own (its port, its data), stopped by PID at the end."""
    registry = PrivateSchemaRegistry(stack, tmp_path / "registry", free_port())
    await registry.start()
    try:
        yield registry
    finally:
        registry.stop()


def retryable_failures(destination: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "courier_export_failures_total", {"destination": destination, "kind": "retryable"}
        )
        or 0.0
    )


async def test_records_wait_while_the_registry_is_down_and_flow_when_it_is_back(
    stack: StackSettings,
    temporal_client: Client,
    unique: str,
    tmp_path: Path,
    private_registry: PrivateSchemaRegistry,
) -> None:
    out = tmp_path / "out.jsonl"
    config = with_formats(file_config(stack, unique, out), private_registry.url)
    name, topic, bootstrap = f"file-{unique}", config.kafka.topics[0], stack.kafka_bootstrap
    schema_id = await register(private_registry.url, f"{topic}-value", ORDER)
    await create_topic(bootstrap, topic, partitions=1)
    await produce(
        bootstrap, topic, [(f"k{n}".encode(), avro(schema_id, order(n))) for n in range(3)]
    )
    private_registry.stop()
    before = retryable_failures(name)

    async def retried() -> bool:
        return retryable_failures(name) >= before + 6

    query = f"CourierTopic = '{topic}'"
    async with courier_running(temporal_client, config):
        # Every record's export is tried and retried while the registry is down ...
        await eventually(retried, timeout=90)
        assert lines(out) == []
        assert set(await statuses(temporal_client, query)) == {"RUNNING"}
        # ... and exported, decoded, once it is back (with the schemas it kept).
        await private_registry.start()
        await wait_for_workflows(temporal_client, query, 3, timeout=120)

    assert {e["offset"]: e["value"] for e in lines(out)} == {n: order_json(n) for n in range(3)}


@pytest.mark.parametrize("mode", ["per_record", "batch"])
async def test_when_rules_route_on_the_decoded_value(
    stack: StackSettings, temporal_client: Client, unique: str, tmp_path: Path, mode: str
) -> None:
    """Ingest decodes Avro values for a `when` rule; a value it cannot decode fails alone."""
    paid_out, other_out = tmp_path / "paid.jsonl", tmp_path / "other.jsonl"
    paid, other = f"paid-{unique}", f"other-{unique}"
    config = pipeline_config(
        stack,
        unique,
        destinations=[
            {"name": paid, "kind": "file", "path": str(paid_out)},
            {"name": other, "kind": "file", "path": str(other_out)},
        ],
        routes={
            "rules": [{"when": 'value.state = "PAID"', "destination": paid}],
            "default": other,
        },
        ingest=BATCH if mode == "batch" else None,
    )
    config = with_formats(config, stack.schema_registry_url)
    topic, bootstrap = config.kafka.topics[0], stack.kafka_bootstrap
    schema_id = await register(stack.schema_registry_url, f"{topic}-value", ORDER)
    await create_topic(bootstrap, topic, partitions=1)
    await produce(
        bootstrap,
        topic,
        [
            (b"k0", avro(schema_id, order(0))),
            (b"k1", avro(schema_id, {**order(1), "state": "NEW"})),
            (b"k2", avro(schema_id, order(2))),
            (b"k3", wire_format(UNKNOWN_ID, b"\x02")),
        ],
    )

    async def exported() -> bool:
        return len(lines(paid_out)) == 2 and len(lines(other_out)) == 1

    async with courier_running(temporal_client, config):
        await eventually(exported, timeout=60)
        query = f"CourierTopic = '{topic}' AND WorkflowType = 'ExportRecord'"
        await wait_for_workflows(temporal_client, query, 1, status=FAILED)
        reason = await failure_of(temporal_client, f"{query} AND ExecutionStatus = 'Failed'")

    assert sorted(e["offset"] for e in lines(paid_out)) == [0, 2]  # per record: any order
    assert [(e["offset"], e["value"]["state"]) for e in lines(other_out)] == [(1, "NEW")]
    assert f"value of {topic}/0/3: schema id {UNKNOWN_ID} not found" in reason, reason


async def failure_of(client: Client, query: str) -> str:
    """The failure messages (cause chain) of the one workflow ``query`` finds."""
    [execution] = [e async for e in client.list_workflows(query)]
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    try:
        await handle.result()
    except WorkflowFailureError as err:
        messages, cause = [], err.cause
        while cause is not None:
            messages.append(str(cause))
            cause = cause.__cause__
        return " / ".join(messages)
    raise AssertionError(f"{execution.id} did not fail")
