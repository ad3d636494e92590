"""Mappings against the real stack: each kind receives the mapped shape (REST body, URL and
header; file lines; PostgreSQL columns), a mapping that fails for one record fails only that
record with a reason naming the field and the expression, and ``courier map --from`` shows
exactly what the destination received."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError

from courier.core import search_attributes as sa
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce, topic_id
from tests.integration.harness import (
    courier_running,
    eventually,
    pipeline_config,
    wait_for_workflows,
)
from tests.integration.test_batch_mode import (
    COURIER,
    FAST_RETRY,
    batch,
    caught_up,
    expected_keys,
    lines_of,
    ranges_settled,
    write_config,
)

pytestmark = pytest.mark.integration

BODY = '{"orderId": value.id, "total": value.qty * value.price, "customer": {"id": value.customer}}'
TOTAL = "value.qty * value.price"
GOOD = 12


def order(i: int) -> dict[str, Any]:
    return {"id": i, "customer": f"c-{i % 3}", "qty": 2, "price": 1.25 + i}


def bad_order(i: int) -> dict[str, Any]:
    return {**order(i), "qty": "many"}  # `value.qty * value.price` fails: qty is not a number


async def test_each_kind_gets_the_mapped_shape_and_a_failing_mapping_fails_only_its_record(
    stack_settings: Any, temporal_client: Client, pg_pool: Any, unique: str, tmp_path: Path
) -> None:
    table = f"mapped_{unique}"
    out = tmp_path / "mapped.jsonl"
    api, archive, warehouse = f"api-{unique}", f"file-{unique}", f"pg-{unique}"
    async with Receiver() as receiver:
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": api,
                    "kind": "rest",
                    "method": "PUT",
                    "url": f"{receiver.url}/partner/{{value.customer}}/orders/{{value.id}}",
                    "headers": {"X-Source": "{topic}/{partition}/{offset}"},
                    "body": {"mapping": BODY},
                    "retry": FAST_RETRY,
                    "batch_size": 5,
                },
                {
                    "name": archive,
                    "kind": "file",
                    "path": str(out),
                    "line": '{"id": value.id, "total": ' + TOTAL + ', "key": key}',
                    "batch_size": 5,
                },
                {
                    "name": warehouse,
                    "kind": "postgres",
                    "dsn": stack_settings.postgres_dsn,
                    "table": table,
                    "columns": {
                        "order_id": {"type": "bigint", "mapping": "value.id"},
                        "customer": {"type": "text", "mapping": "value.customer"},
                        "total": {"type": "numeric", "mapping": TOTAL},
                        "note": {"type": "text", "mapping": "value.note", "nullable": True},
                        "doc": {"type": "jsonb", "mapping": "value"},
                        "at": {"type": "timestamptz", "mapping": "timestamp"},
                    },
                    "batch_size": 5,
                },
            ],
            routes={
                "rules": [
                    {"prefix": "api-", "destination": api},
                    {"prefix": "file-", "destination": archive},
                    {"prefix": "pg-", "destination": warehouse},
                ]
            },
            ingest=batch(50),
        )
        topic, group = config.kafka.topics[0], config.kafka.group
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        records: list[tuple[str, dict[str, Any]]] = []
        for i in range(GOOD + 1):
            for kind in ("api", "file", "pg"):
                records.append((f"{kind}-{i}", bad_order(i) if i == 7 else order(i)))
        sent = await produce(
            stack_settings.kafka_bootstrap,
            topic,
            [(k.encode(), json.dumps(v).encode()) for k, v in records],
        )
        tid = await topic_id(stack_settings.kafka_bootstrap, topic)
        keys = [k for k, _ in records]
        expected = expected_keys(group, topic, tid, keys, sent)
        offset_of = {k: md.offset for k, md in zip(keys, sent, strict=True)}

        try:
            async with courier_running(temporal_client, config) as ingest:

                async def settled() -> bool:
                    return await caught_up(ingest, len(records)) and await ranges_settled(
                        temporal_client, topic
                    )

                await eventually(settled, timeout=90)
                # The bad record of each kind fails in a workflow of its own, which its range
                # starts as it ends (and which needs the workflow worker to end).
                bad = {offset_of[f"{kind}-7"]: kind for kind in ("api", "file", "pg")}
                query = (
                    f"WorkflowType = 'ExportRecord' AND CourierTopic = '{topic}' "
                    "AND ExecutionStatus = 'Failed'"
                )
                await wait_for_workflows(temporal_client, query, len(bad), status=None, timeout=60)

            # REST: the mapped URL, header and body, with the record's idempotency key.
            effects = receiver.effect_requests("/partner/")
            assert len(effects) == GOOD
            by_id = {json.loads(r.body)["orderId"]: r for r in effects}
            assert sorted(by_id) == [i for i in range(GOOD + 1) if i != 7]
            for i, request in by_id.items():
                assert request.method == "PUT"
                assert request.path == f"/partner/c-{i % 3}/orders/{i}"
                assert json.loads(request.body) == {
                    "orderId": i,
                    "total": 2 * (1.25 + i),
                    "customer": {"id": f"c-{i % 3}"},
                }
                assert request.headers["content-type"] == "application/json"
                assert request.headers["x-source"] == f"{topic}/0/{offset_of[f'api-{i}']}"
                assert request.idempotency_key == expected[f"api-{i}"]

            # File: mapped lines, each with its idempotency key.
            lines = lines_of(out)
            assert sorted(line["key"] for line in lines) == sorted(
                f"file-{i}" for i in range(GOOD + 1) if i != 7
            )
            for line in lines:
                i = int(line["key"].split("-")[1])
                assert line == {
                    "id": i,
                    "total": 2 * (1.25 + i),
                    "key": f"file-{i}",
                    "idempotency_key": expected[line["key"]],
                }

            # PostgreSQL: a row of the declared, typed columns per record.
            rows = await pg_pool.fetch(f'SELECT * FROM "{table}" ORDER BY order_id')
            assert [r["order_id"] for r in rows] == [i for i in range(GOOD + 1) if i != 7]
            for row in rows:
                i = row["order_id"]
                assert row["customer"] == f"c-{i % 3}"
                assert row["total"] == Decimal(str(2 * (1.25 + i)))
                assert row["note"] is None
                assert json.loads(row["doc"]) == order(i)
                assert row["at"] is not None
                assert row["idempotency_key"] == expected[f"pg-{i}"]
            columns = [r["attname"] for r in await pg_pool.fetch(COLUMNS_SQL, table)]
            assert columns == [
                "order_id",
                "customer",
                "total",
                "note",
                "doc",
                "at",
                "idempotency_key",
                "exported_at",
            ]

            # The bad record of each kind failed alone, its reason naming field and expression.
            failed = [wf async for wf in temporal_client.list_workflows(query)]
            assert sorted(wf.typed_search_attributes.get(sa.OFFSET) or -1 for wf in failed) == (
                sorted(bad)
            )
            fields = {"api": "body.mapping", "file": "line", "pg": "columns.total: mapping"}
            for wf in failed:
                offset = wf.typed_search_attributes.get(sa.OFFSET)
                assert offset is not None
                with pytest.raises(WorkflowFailureError) as failure:
                    await temporal_client.get_workflow_handle(wf.id).result()
                message = str(failure.value.cause)
                assert fields[bad[offset]] in message, message
                assert "T2001" in message and "must evaluate to a number" in message, message
        finally:
            await pg_pool.execute(f'DROP TABLE IF EXISTS "{table}"')


COLUMNS_SQL = (
    "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) "
    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
)


async def test_per_record_mapping_fails_one_workflow_and_courier_map_shows_what_was_sent(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    name = f"api-{unique}"
    async with Receiver() as receiver:
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/orders/{{value.id}}",
                    "headers": {"X-Customer": "{value.customer}"},
                    "body": {"mapping": BODY},
                    "retry": FAST_RETRY,
                }
            ],
            routes={"default": name},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        values = [order(0), order(1), bad_order(2), order(3)]
        await produce(
            stack_settings.kafka_bootstrap,
            topic,
            [(f"k{i}".encode(), json.dumps(v).encode()) for i, v in enumerate(values)],
        )
        query = f"WorkflowType = 'ExportRecord' AND CourierTopic = '{topic}'"

        async def settled() -> bool:
            closed = await temporal_client.count_workflows(
                f"{query} AND ExecutionStatus != 'Running'"
            )
            return closed.count >= len(values)

        async with courier_running(temporal_client, config):
            await eventually(settled, timeout=90)

        failed = [
            wf
            async for wf in temporal_client.list_workflows(
                f"{query} AND ExecutionStatus = 'Failed'"
            )
        ]
        assert [wf.typed_search_attributes.get(sa.OFFSET) for wf in failed] == [2]
        with pytest.raises(WorkflowFailureError) as failure:
            await temporal_client.get_workflow_handle(failed[0].id).result()
        reason = chain(failure.value)
        assert f"{topic}/0/2: body.mapping: mapping `{BODY[:40]}" in reason, reason
        assert "failed: T2001: The left side of the * operator must evaluate to a number" in reason
        effects = {r.path: r for r in receiver.effect_requests("/orders/")}
        assert sorted(effects) == ["/orders/0", "/orders/1", "/orders/3"]

        # `courier map --from` prints exactly what the endpoint received for a record.
        config_file = write_config(config, tmp_path / "courier.yaml")
        shown = await run_courier(
            "map", "-d", name, "--from", f"{topic}/0/1", "--json", "-c", str(config_file)
        )
        assert shown["code"] == 0, shown
        preview = json.loads(shown["stdout"])
        received = effects["/orders/1"]
        assert preview["method"] == received.method == "POST"
        assert preview["url"] == f"{receiver.url}/orders/1"
        assert preview["body"].encode() == received.body
        assert {k.lower(): v for k, v in preview["headers"].items()} == {
            k: v
            for k, v in received.headers.items()
            if k not in ("accept", "accept-encoding", "connection", "user-agent")
        }
        # The failing record: the same reason, exit 1, nothing sent.
        requests = len(receiver.requests)
        bad = await run_courier("map", "-d", name, "--from", f"{topic}/0/2", "-c", str(config_file))
        assert bad["code"] == 1
        assert bad["stderr"].startswith(f"error: {name}: body.mapping: mapping `"), bad
        assert "T2001" in bad["stderr"]
        missing = await run_courier(
            "map", "-d", name, "--from", f"{topic}/0/9", "-c", str(config_file)
        )
        assert missing["code"] == 2
        assert f"{topic}/0 holds offsets 0..3, not 9" in missing["stderr"], missing
        assert len(receiver.requests) == requests


async def run_courier(*args: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        COURIER, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    return {"code": process.returncode, "stdout": stdout.decode(), "stderr": stderr.decode()}


def chain(error: BaseException | None) -> str:
    """The messages of an error and its causes, joined."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = getattr(error, "cause", None) or error.__cause__
    return " | ".join(messages)


@pytest.mark.parametrize("mode", ["per_record", "batch"])
async def test_routes_on_a_header_and_a_value_field_and_a_failing_rule_fails_its_record(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path, mode: str
) -> None:
    from aiokafka import AIOKafkaProducer

    names = {n: f"{n}-{unique}" for n in ("eu", "big", "other")}
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=[
            {"name": name, "kind": "file", "path": str(tmp_path / f"{n}.jsonl")}
            for n, name in names.items()
        ],
        routes={
            "rules": [
                {"when": 'headers.region = "eu"', "destination": names["eu"]},
                {"when": "value.total > 100", "destination": names["big"]},
            ],
            "default": names["other"],
        },
        ingest=batch(50) if mode == "batch" else {},
    )
    topic = config.kafka.topics[0]
    await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
    records: list[tuple[str, dict[str, Any], str | None]] = [
        ("a", {"total": 500}, "eu"),
        ("b", {"total": 500}, "us"),
        ("c", {"total": 5}, None),
        ("d", {"total": "lots"}, None),  # `value.total > 100` fails: the record fails
        ("e", {"total": 7}, "eu"),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=stack_settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, region in records:
            headers = [] if region is None else [("region", region.encode())]
            await producer.send_and_wait(
                topic, json.dumps(value).encode(), key=key.encode(), headers=headers
            )
    finally:
        await producer.stop()

    async with courier_running(temporal_client, config) as ingest:

        async def settled() -> bool:
            return (
                await caught_up(ingest, len(records))
                and not (
                    await temporal_client.count_workflows(
                        f"CourierTopic = '{topic}' AND ExecutionStatus = 'Running'"
                    )
                ).count
            )

        await eventually(settled, timeout=90)

        async def exported() -> dict[str, list[str]]:
            found = {
                n: sorted(line["key"] for line in lines_of(tmp_path / f"{n}.jsonl")) for n in names
            }
            return found if sum(map(len, found.values())) >= 4 else {}

        assert await eventually(exported, timeout=30) == {
            "eu": ["a", "e"],
            "big": ["b"],
            "other": ["c"],
        }
    failed = [
        wf
        async for wf in temporal_client.list_workflows(
            f"CourierTopic = '{topic}' AND ExecutionStatus = 'Failed'"
        )
    ]
    assert len(failed) == 1
    with pytest.raises(WorkflowFailureError) as failure:
        await temporal_client.get_workflow_handle(failed[0].id).result()
    reason = chain(failure.value)
    assert (
        f"{topic}/0/3: rule 2: routes.rules[1].when: mapping `value.total > 100` failed: "
        "T2009" in reason
    ), reason
