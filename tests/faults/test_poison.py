"""Poison records: awkward keys, values and headers reach every sink intact, or end visibly.

Each sink kind gets the same records: binary and NUL keys and values, a null key, an empty
key, an empty value, a null value, 10,000-byte keys (text and binary), binary headers, and
values just under and just over ``temporal.max_input_bytes`` (per-record inline mode: an input
over the limit travels by reference, the worker reads the record back from Kafka). Every
record must be exported byte for byte; none may leave its workflow running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.converter import DataConverter

from courier.config.model import parse_config
from courier_devtools.topics import create_topic, topic_id
from tests.faults.common import (
    fill,
    json_records,
    wait_workflows_closed,
)
from tests.faults.ledger import (
    FAULT_ID,
    FaultReceiver,
    FileSink,
    Headers,
    Ledger,
    PostgresSink,
    RestSink,
    Sink,
    tally,
)
from tests.faults.processes import Fleet, config_data
from tests.faults.report import Row
from workflows.types import Blob, DestinationPolicy, ExportRecordInput, Header, KafkaRecord

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MAX_INPUT_BYTES = 20_000
ROUNDS = 3
ORDINARY = 60
BINARY_KEY = (bytes(range(256)) * 40)[:10_000]

Poison = tuple[str, bytes | None, bytes | None, Headers]


def fixed_poison() -> list[Poison]:
    """The poison records whose size does not depend on the limit: (label, key, value, headers)."""
    return [
        ("binary key with NUL", b"\x00\xffbin\x00key", b'{"a": 1}', ()),
        ("NUL in a UTF-8 key", b"nul\x00key", b'{"a": 2}', ()),
        ("null key", None, b'{"a": 3}', ()),
        ("empty key", b"", b'{"a": 4}', ()),
        ("empty value", b"empty-value", b"", ()),
        ("null value", b"tombstone", None, ()),
        ("binary value with NUL", b"binary-value", b"\x00\x01\xfe\xff\x00", ()),
        ("NUL in a UTF-8 value", b"nul-value", b"text\x00with NUL", ()),
        ("10,000-byte text key", b"K" * 10_000, b'{"a": 5}', ()),
        ("10,000-byte binary key", BINARY_KEY, b'{"a": 6}', ()),
        (
            "binary headers",
            b"headers",
            b"{}",
            (("bin", b"\x00\xff\xfe"), ("nul", b"a\x00b"), ("empty", b""), ("text", b"plain")),
        ),
    ]


async def inline_size(
    fid: str, topic: str, topic_id_: str, policy: DestinationPolicy, key: bytes, value: bytes
) -> int:
    """Bytes of a record's inline workflow input as ingest measures it (default converter)."""
    record = KafkaRecord(
        topic=topic,
        topic_id=topic_id_,
        partition=0,
        offset=0,
        key=Blob.of(key),
        value=Blob.of(value),
        timestamp_ms=int(time.time() * 1000),
        headers=[Header(FAULT_ID, Blob.of(fid.encode()))],
    )
    payloads = await DataConverter.default.encode([ExportRecordInput(record, policy)])
    return sum(p.ByteSize() for p in payloads)


def _text(n: int) -> bytes:
    return b"x" * n


def _binary(n: int) -> bytes:
    return bytes(i % 251 for i in range(n)) + b"\xff"  # never UTF-8: base64 in the input


async def sized_poison(
    scenario: str, topic: str, topic_id_: str, policy: DestinationPolicy
) -> list[Poison]:
    """Values whose inline input is just under, and just over, ``MAX_INPUT_BYTES``.

    "Just" is 16 bytes: the sizes computed here for offset 0 and a two-digit id may differ by
    a byte or two from the records' own.
    """

    async def smallest_over(key: bytes, make: Callable[[int], bytes], target: int) -> int:
        low, high = 0, 2 * MAX_INPUT_BYTES  # size(make(low)) <= target < size(make(high))
        while high - low > 1:
            middle = (low + high) // 2
            size = await inline_size(f"{scenario}-00", topic, topic_id_, policy, key, make(middle))
            low, high = (middle, high) if size <= target else (low, middle)
        return high

    under = await smallest_over(b"under", _text, MAX_INPUT_BYTES - 16) - 1
    over = await smallest_over(b"over", _text, MAX_INPUT_BYTES + 16)
    over_binary = await smallest_over(b"over-binary", _binary, MAX_INPUT_BYTES + 16)
    return [
        ("value just under the limit", b"under", _text(under), ()),
        ("value just over the limit", b"over", _text(over), ()),
        ("binary value just over the limit", b"over-binary", _binary(over_binary), ()),
    ]


@pytest.mark.parametrize("kind", ["rest", "file", "postgres"])
async def test_poison_records(
    stack_settings: Any,
    temporal_client: Client,
    pg_pool: asyncpg.Pool,
    unique: str,
    tmp_path: Path,
    fleet: Fleet,
    receiver: FaultReceiver,
    fault_row: Row,
    kind: str,
) -> None:
    scenario = f"poison-{kind}"
    name, topic = f"{kind}-{unique}", f"t-{unique}"
    bootstrap = stack_settings.kafka_bootstrap
    table = f"poison_{unique}"
    destination: dict[str, Any] = {
        "rest": {"kind": "rest", "url": f"{receiver.url}/poison"},
        "file": {"kind": "file", "path": str(tmp_path / "out.jsonl")},
        "postgres": {"kind": "postgres", "dsn": stack_settings.postgres_dsn, "table": table},
    }[kind]
    data = config_data(
        stack_settings,
        unique,
        destinations=[{"name": name, **destination}],
        routes={"default": name},
        temporal={"max_input_bytes": MAX_INPUT_BYTES},
    )
    config = fleet.write_config(data)
    policy = parse_config(data, environ={}).destination(name).policy()
    await create_topic(bootstrap, topic)
    poison = fixed_poison() + await sized_poison(
        scenario, topic, await topic_id(bootstrap, topic), policy
    )
    ingest, *_ = await asyncio.gather(
        fleet.ingest(config), fleet.workflows(config), fleet.worker(config, name)
    )
    ledger = Ledger(scenario)
    labels: dict[str, str] = {}
    for _ in range(ROUNDS):
        sent = await ledger.produce(bootstrap, topic, [(k, v, h) for _, k, v, h in poison])
        labels.update({s.fid: label for s, (label, *_) in zip(sent, poison, strict=True)})
    await ledger.produce(bootstrap, topic, json_records(ORDINARY), group="ordinary")
    sink: Sink
    if kind == "rest":
        sink = RestSink(receiver, "/poison", ledger)
    elif kind == "file":
        sink = FileSink(tmp_path / "out.jsonl", ledger)
    else:
        sink = PostgresSink(pg_pool, table, ledger)
    try:
        # Nothing may stall: every workflow ends, exported or visibly failed.
        by_status = await wait_workflows_closed(temporal_client, topic, len(ledger), timeout=120)
        counted = await tally(sink, ledger)
        by_reference = ingest.log().count("goes by reference")
        over = sum(1 for label in labels.values() if "over the limit" in label)
        failing = sorted({labels.get(f, f) for f in [*counted.missing, *counted.corrupted]})
        fill(
            fault_row,
            scenario,
            counted,
            notes=f"{len(poison)} kinds of poison × {ROUNDS} + {ORDINARY} ordinary records; "
            f"{by_reference} went by reference; workflows {by_status}"
            + (f"; not exported intact: {', '.join(failing)}" if failing else ""),
            workflows=by_status,
            not_exported=failing,
        )
        assert counted.exported == counted.produced and not counted.duplicate_effects, (
            f"{counted.exported}/{counted.produced} exported intact ({counted.problems()}); "
            f"not exported intact: {failing}; workflows {by_status}"
        )
        assert by_status == {"COMPLETED": len(ledger)}, by_status
        assert by_reference == over, f"{by_reference} went by reference, {over} are over the limit"
        assert "cannot be handed off" not in ingest.log()
    finally:
        if kind == "postgres":
            await pg_pool.execute(f'DROP TABLE IF EXISTS "{table}"')
