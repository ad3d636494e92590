"""Ingest against the real stack when records are unusual: transactions, unencodable inputs (a
record's, a batch range's) and inputs over the size limit (the hand-off failure contract of
``ingest.handoff``)."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.exceptions import ApplicationError

from courier.core import metrics
from courier.core import search_attributes as sa
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce
from ingest.consumer import Ingest
from tests.integration.harness import (
    courier_running,
    eventually,
    file_config,
    pipeline_config,
    wait_for_workflows,
)
from workflows.export_record import HAND_OFF_FAILED_ERROR_TYPE
from workflows.types import ExportRangeInput, FailedRecord

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
POISON = b"POISON"


def exported_keys(out: Path) -> list[str]:
    """Keys of the records in the file destination, sorted (empty if nothing was written)."""
    if not out.exists():
        return []
    return sorted(json.loads(line)["key"] for line in out.read_text().splitlines())


async def committed_offset(bootstrap: str, group: str, topic: str, partition: int = 0) -> int:
    """The group's committed offset of ``topic/partition`` (-1 if none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    for tp, meta in offsets.items():
        if tp.topic == topic and tp.partition == partition:
            return int(meta.offset)
    return -1


async def wait_committed(bootstrap: str, group: str, topic: str, offset: int) -> None:
    """Wait until the group's committed offset of ``topic/0`` reaches ``offset``."""

    async def reached() -> int | None:
        found = await committed_offset(bootstrap, group, topic)
        return found if found >= offset else None

    try:
        await eventually(reached, timeout=TIMEOUT)
    except AssertionError:
        found = await committed_offset(bootstrap, group, topic)
        raise AssertionError(f"committed offset of {topic}/0 is {found}, not {offset}") from None


async def failure_of(client: Client, query: str) -> ApplicationError:
    """The failure of the one workflow matching ``query``, which must have failed."""
    ids = [wf.id async for wf in client.list_workflows(query)]
    assert len(ids) == 1, f"{query!r} matched {ids}"
    with pytest.raises(WorkflowFailureError) as failure:
        await client.get_workflow_handle(ids[0]).result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError), f"unexpected failure {cause!r}"
    assert cause.type == HAND_OFF_FAILED_ERROR_TYPE
    return cause


def handed_off(ingest: Ingest, n: int) -> Any:
    """A check for :func:`eventually`: ``n`` records finished, their offsets committed."""

    async def check() -> bool:
        finished = sum(ingest.counts[k] for k in ("started", "existing", "failed", "skipped"))
        return finished >= n and ingest.tracker.committable() == {}

    return check


# --- Transactions --------------------------------------------------------------------------


async def produce_transactions(bootstrap: str, topic: str, transactional_id: str) -> None:
    """Five records in an aborted transaction (offsets 0-4, marker 5), then ten in a committed
    one (offsets 6-15, marker 16). The aborted records are in the log before the abort."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=transactional_id,
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        for i in range(5):
            await producer.send_and_wait(topic, key=f"aborted-{i}".encode(), value=b"{}")
        await producer.abort_transaction()
        await producer.begin_transaction()
        for i in range(10):
            await producer.send_and_wait(topic, key=f"committed-{i}".encode(), value=b"{}")
        await producer.commit_transaction()
    finally:
        await producer.stop()


COMMITTED_KEYS = sorted(f"committed-{i}" for i in range(10))
ABORTED_KEYS = sorted(f"aborted-{i}" for i in range(5))


async def run_transactions(
    settings: Any,
    temporal_client: Client,
    unique: str,
    out: Path,
    kafka: dict[str, Any] | None = None,
    *,
    expected: int,
) -> Ingest:
    """Produce :func:`produce_transactions`, run Courier until ``expected`` records are out."""
    config = file_config(settings, unique, out, kafka=kafka)
    topic, group = config.kafka.topics[0], config.kafka.group
    bootstrap = settings.kafka_bootstrap
    await create_topic(bootstrap, topic, partitions=1)
    await produce_transactions(bootstrap, topic, f"tx-{unique}")
    query = f"CourierTopic = '{topic}'"
    async with courier_running(temporal_client, config) as ingest:
        assert ingest is not None
        await wait_for_workflows(temporal_client, query, expected, timeout=TIMEOUT)
        await eventually(handed_off(ingest, expected), timeout=TIMEOUT)
        # The last record is offset 15 of the partition: everything before it was read (or
        # skipped, in read_committed) once 16 is committed.
        await wait_committed(bootstrap, group, topic, 16)
    assert (await temporal_client.count_workflows(query)).count == expected
    return ingest


async def test_only_committed_transactions_are_exported(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    ingest = await run_transactions(stack_settings, temporal_client, unique, out, expected=10)
    assert ingest.config.kafka.isolation_level == "read_committed"  # the default
    assert ingest.counts["started"] == 10 and ingest.counts["failed"] == 0
    assert exported_keys(out) == COMMITTED_KEYS


async def test_read_uncommitted_exports_aborted_transactions_too(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    ingest = await run_transactions(
        stack_settings,
        temporal_client,
        unique,
        out,
        {"isolation_level": "read_uncommitted"},
        expected=15,
    )
    assert ingest.counts["started"] == 15
    assert exported_keys(out) == sorted(ABORTED_KEYS + COMMITTED_KEYS)


@pytest.mark.parametrize("mode", ["per_record", "batch"])
async def test_a_topic_ending_in_an_aborted_transaction_is_committed_to_its_end(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path, mode: str
) -> None:
    """Ten records in a committed transaction (0-9, marker 10), then five in an aborted one
    (11-15, marker 16): nothing after offset 9 is ever handed off, yet the group's offset must
    reach the log's end (17), or its lag never returns to 0."""
    out = tmp_path / "out.jsonl"
    config = file_config(stack_settings, unique, out, ingest={"mode": mode, "max_wait": "200ms"})
    topic, group = config.kafka.topics[0], config.kafka.group
    bootstrap = stack_settings.kafka_bootstrap
    await create_topic(bootstrap, topic, partitions=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"tx-{unique}", enable_idempotence=True
    )
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(10):
                await producer.send_and_wait(topic, key=f"committed-{i}".encode(), value=b"{}")
        await producer.begin_transaction()
        for i in range(5):
            await producer.send_and_wait(topic, key=f"aborted-{i}".encode(), value=b"{}")
        await producer.abort_transaction()
    finally:
        await producer.stop()
    async with courier_running(temporal_client, config):
        await wait_committed(bootstrap, group, topic, 17)

        async def exported() -> bool:
            return exported_keys(out) == COMMITTED_KEYS

        await eventually(exported, timeout=TIMEOUT)


# --- A record whose input cannot be encoded ------------------------------------------------


class PoisonCodec(PayloadCodec):
    """Refuses to encode any payload carrying the value ``POISON``; decodes as is.

    A codec rather than a payload converter class: it sees the encoded JSON, so it finds the
    marker without knowing Courier's types, and it never runs inside the workflow sandbox (the
    workers in ``courier_running`` share this client's data converter).
    """

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        for payload in payloads:
            if b'"' + POISON + b'"' in payload.data:
                # The message must not quote the marker: it becomes the fallback's input.
                raise ValueError("this codec refuses the marked record")
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


async def test_a_record_whose_input_cannot_be_encoded_fails_visibly_and_the_partition_moves_on(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    client = await Client.connect(
        stack_settings.temporal_address,
        namespace=stack_settings.temporal_namespace,
        data_converter=dataclasses.replace(DataConverter.default, payload_codec=PoisonCodec()),
    )
    out = tmp_path / "out.jsonl"
    config = file_config(stack_settings, unique, out)
    topic, group = config.kafka.topics[0], config.kafka.group
    bootstrap = stack_settings.kafka_bootstrap
    await create_topic(bootstrap, topic, partitions=1)
    records: list[tuple[bytes | None, bytes | None]] = [
        (f"good-{i}".encode(), b"{}") for i in range(5)
    ]
    records.append((b"poison", POISON))
    records += [(f"good-{i}".encode(), b"{}") for i in range(5, 10)]
    await produce(bootstrap, topic, records)
    failures_before = metrics.HAND_OFF_FAILURES.labels(topic)._value.get()

    query = f"CourierTopic = '{topic}'"
    async with courier_running(client, config) as ingest:
        assert ingest is not None
        await wait_for_workflows(client, query, 10, timeout=TIMEOUT)
        await wait_for_workflows(
            client, query, 1, status=WorkflowExecutionStatus.FAILED, timeout=TIMEOUT
        )
        await eventually(handed_off(ingest, 11), timeout=TIMEOUT)
        await wait_committed(bootstrap, group, topic, 11)

    assert exported_keys(out) == sorted(f"good-{i}" for i in range(10))
    cause = await failure_of(temporal_client, f"{query} AND CourierOffset = 5")
    assert "cannot encode the record" in cause.message, cause.message
    assert ingest.counts["failed"] == 1 and ingest.counts["started"] == 10
    assert metrics.HAND_OFF_FAILURES.labels(topic)._value.get() == failures_before + 1


# --- A batch range whose input cannot be encoded -------------------------------------------

POISON_OFFSET = 5


class RangePoisonCodec(PayloadCodec):
    """Refuses to encode the input of a range that holds offset ``POISON_OFFSET``; decodes as is.

    It reads the encoded JSON: a range's input lists its offsets per destination in ``slices``
    (its failed workflow's input lists none there, so that one goes through).
    """

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        for payload in payloads:
            try:
                data = json.loads(payload.data)
            except ValueError:
                continue
            slices = data.get("slices") if isinstance(data, dict) else None
            if any(POISON_OFFSET in piece.get("offsets", []) for piece in slices or []):
                raise ValueError("this codec refuses the marked range")
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


async def range_input_of(client: Client, workflow_id: str) -> ExportRangeInput:
    """The input of a range's workflow, from its history's first event."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [found] = await client.data_converter.decode(started.input.payloads, [ExportRangeInput])
    assert isinstance(found, ExportRangeInput)
    return found


async def test_a_range_whose_input_cannot_be_encoded_fails_visibly_and_the_partition_moves_on(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    client = await Client.connect(
        stack_settings.temporal_address,
        namespace=stack_settings.temporal_namespace,
        data_converter=dataclasses.replace(DataConverter.default, payload_codec=RangePoisonCodec()),
    )
    out = tmp_path / "out.jsonl"
    config = file_config(
        stack_settings,
        unique,
        out,
        ingest={"mode": "batch", "max_records": 4, "max_wait": "2s"},
    )
    topic, group = config.kafka.topics[0], config.kafka.group
    bootstrap = stack_settings.kafka_bootstrap
    await create_topic(bootstrap, topic, partitions=1)
    keys = [f"rec-{i}" for i in range(11)]
    await produce(bootstrap, topic, [(k.encode(), b"{}") for k in keys])
    failures_before = metrics.HAND_OFF_FAILURES.labels(topic)._value.get()

    query = f"WorkflowType = 'ExportRange' AND CourierTopic = '{topic}'"
    records = f"WorkflowType = 'ExportRecord' AND CourierTopic = '{topic}'"
    async with courier_running(client, config) as ingest:
        assert ingest is not None
        await eventually(handed_off(ingest, len(keys)), timeout=TIMEOUT)
        await wait_committed(bootstrap, group, topic, len(keys))
        # Every range's workflow completes: the one that could not be handed off too, once each
        # of its records has a Failed workflow of its own.
        total = (await temporal_client.count_workflows(query)).count
        await wait_for_workflows(client, query, total, timeout=TIMEOUT)
        inputs = [
            await range_input_of(temporal_client, wf.id)
            async for wf in temporal_client.list_workflows(query)
        ]
        [failed] = [i for i in inputs if not i.slices]
        offsets = list(range(failed.first_offset, failed.last_offset + 1))
        await wait_for_workflows(
            client,
            records,
            len(offsets),
            status=WorkflowExecutionStatus.FAILED,
            timeout=TIMEOUT,
        )

    reason = "hand-off failed: ValueError: this codec refuses the marked range"
    assert POISON_OFFSET in offsets
    assert failed.failed == [FailedRecord(o, f"file-{unique}", reason) for o in offsets]
    own = [wf async for wf in temporal_client.list_workflows(f"{records}")]
    assert sorted(wf.typed_search_attributes.get(sa.OFFSET) or -1 for wf in own) == offsets
    for wf in own:
        with pytest.raises(WorkflowFailureError) as failure:
            await temporal_client.get_workflow_handle(wf.id).result()
        assert reason in str(failure.value.cause), failure.value.cause

    # The partition moved on: every record outside the failed range is exported, once.
    assert exported_keys(out) == sorted(k for i, k in enumerate(keys) if i not in offsets)
    assert ingest.counts["failed"] == len(offsets)
    assert ingest.counts["started"] == len(keys) - len(offsets)
    assert metrics.HAND_OFF_FAILURES.labels(topic)._value.get() == failures_before + 1


# --- Records over the encoded size limit ---------------------------------------------------


async def create_big_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "8000000"})]
        )
        assert [code for _, code, *_ in response.topic_errors] == [0], response
    finally:
        await admin.close()


def payload_data(message: Message) -> bytes:
    """The data of every Payload anywhere inside a protobuf message, concatenated."""
    found = b""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        for item in value if field.is_repeated else [value]:
            if isinstance(item, Payload):
                found += item.data
            elif isinstance(item, Message):
                found += payload_data(item)
    return found


async def history_bytes(client: Client, query: str) -> bytes:
    """The payload data of every history event of the matching workflows."""
    found = b""
    async for execution in client.list_workflows(query):
        history = await client.get_workflow_handle(execution.id).fetch_history()
        for event in history.events:
            found += payload_data(event)
    return found


@pytest.mark.parametrize("payloads", ["inline", "reference"])
async def test_records_over_the_input_limit_go_by_reference_to_every_kind(
    stack_settings: Any,
    temporal_client: Client,
    pg_pool: Any,
    unique: str,
    tmp_path: Path,
    payloads: str,
) -> None:
    out = tmp_path / "out.jsonl"
    table = f"big_{unique}"
    async with Receiver() as receiver:
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {"name": f"file-{unique}", "kind": "file", "path": str(out)},
                {
                    "name": f"pg-{unique}",
                    "kind": "postgres",
                    "dsn": stack_settings.postgres_dsn,
                    "table": table,
                },
                {"name": f"api-{unique}", "kind": "rest", "url": f"{receiver.url}/big/{{key}}"},
            ],
            routes={
                "rules": [
                    {"prefix": "f-", "destination": f"file-{unique}"},
                    {"prefix": "p-", "destination": f"pg-{unique}"},
                    {"prefix": "r-", "destination": f"api-{unique}"},
                ]
            },
            ingest={"payloads": payloads},
        )
        topic, bootstrap = config.kafka.topics[0], stack_settings.kafka_bootstrap
        await create_big_topic(bootstrap, topic)
        binary = bytes(range(256)) * (5_000_000 // 256)  # 5 MB, not UTF-8: base64 inline
        quotes = b'"' * 1_200_000  # 1.2 MB; escaping doubles it inline
        big_json = json.dumps({"blob": "x" * 5_000_000}).encode()
        records = [
            (b"f-binary", binary),
            (b"f-quotes", quotes),
            (b"p-json", big_json),
            (b"r-binary", binary),
            (b"f-small", b"{}"),
        ]
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", max_request_size=7_000_000
        )
        await producer.start()
        try:
            for key, value in records:
                await producer.send_and_wait(topic, key=key, value=value)
        finally:
            await producer.stop()

        query = f"CourierTopic = '{topic}'"
        async with courier_running(temporal_client, config) as ingest:
            assert ingest is not None
            await wait_for_workflows(temporal_client, query, len(records), timeout=60)
            await wait_committed(bootstrap, config.kafka.group, topic, len(records))
        assert ingest.counts["failed"] == 0

        lines = {json.loads(line)["key"]: json.loads(line) for line in out.read_text().splitlines()}
        assert sorted(lines) == ["f-binary", "f-quotes", "f-small"]
        assert lines["f-binary"]["value_encoding"] == "base64"
        assert base64.b64decode(lines["f-binary"]["value"]) == binary
        assert lines["f-quotes"]["value"] == quotes.decode()
        row = await pg_pool.fetchrow(f'SELECT value FROM "{table}"')
        assert json.loads(row["value"]) == json.loads(big_json)
        [request] = receiver.effect_requests("/big/")
        assert base64.b64decode(json.loads(request.body)["value"]) == binary

    history = await history_bytes(temporal_client, query)
    assert b"f-binary" in history and b"p-json" in history  # keys travel; the walk sees them
    assert b"x" * 1000 not in history
    assert b'\\"' * 1000 not in history
    assert base64.b64encode(binary)[:1000] not in history
