"""Cost of record formats: decoding a record's value, per record, in a worker.

    python -m benchmarks.formats [--registry URL]

Decodes 100,000 Avro records (an order of 8 fields: long, nested record, union, decimal,
timestamp, enum, map, string; about 60 bytes each) in the schema-registry wire format with
:class:`activities.formats.RecordDecoder`, and the same records' JSON text as today's reading
does, then builds the JSON envelope of each; prints microseconds per record (min/median/max of
5 runs). The schema is fetched once (from ``--registry``, e.g. the stack's
``http://127.0.0.1:8081/apis/ccompat/v7``, or else from a stand-in answering in-process) and
then comes from the cache, as in a worker. CPU only: no Kafka or Temporal involved.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import statistics
import time
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

import fastavro
import httpx

from activities.encoding import record_envelope
from activities.formats import (
    RecordDecoder,
    SchemaRegistryClient,
    SchemaRegistryConfig,
    TopicFormat,
    wire_format,
)
from workflows.types import Blob, KafkaRecord, OutgoingRecord

RECORDS = 100_000
RUNS = 5
TOPIC = "orders"
SCHEMA = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
            {"name": "id", "type": "string"}, {"name": "tier", "type": "int"}]}},
        {"name": "note", "type": ["null", "string"]},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal",
                                    "precision": 10, "scale": 2}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["NEW", "PAID"]}},
        {"name": "tags", "type": {"type": "map", "values": "string"}},
        {"name": "channel", "type": "string"},
    ],
}  # fmt: skip


def value(n: int) -> dict[str, Any]:
    return {
        "id": n,
        "customer": {"id": f"c-{n % 1000}", "tier": n % 3},
        "note": None if n % 2 else "leave at the door",
        "amount": Decimal(n % 10_000) / 100,
        "at": datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC) + datetime.timedelta(seconds=n),
        "state": "PAID",
        "tags": {"source": "web"},
        "channel": "shop",
    }


def records(encode: Callable[[dict[str, Any]], bytes]) -> list[OutgoingRecord]:
    return [
        OutgoingRecord(
            f"courier/g/{TOPIC}/0/{n}",
            KafkaRecord(TOPIC, 0, n, Blob.of(b"k"), Blob.of(encode(value(n))), 0),
        )
        for n in range(RECORDS)
    ]


async def timed(run: Callable[[], Coroutine[Any, Any, None]]) -> list[float]:
    """Microseconds per record of ``run`` (over all records), ``RUNS`` times."""
    out = []
    for _ in range(RUNS):
        start = time.perf_counter()
        await run()
        out.append((time.perf_counter() - start) / RECORDS * 1e6)
    return out


def stand_in(schema_id: int) -> httpx.MockTransport:
    body = {"schema": json.dumps(SCHEMA)}

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    return httpx.MockTransport(handle)


async def main(registry_url: str | None) -> None:
    """Measure and print one line per reading."""
    if registry_url:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{registry_url}/subjects/bench-orders-value/versions",
                json={"schema": json.dumps(SCHEMA)},
            )
            response.raise_for_status()
            schema_id = int(response.json()["id"])
        client = SchemaRegistryClient(SchemaRegistryConfig(url=registry_url))
    else:
        schema_id = 1
        client = SchemaRegistryClient(
            SchemaRegistryConfig(url="http://stand-in"), transport=stand_in(schema_id)
        )
    parsed = fastavro.parse_schema(SCHEMA)

    def avro(v: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, v)
        return wire_format(schema_id, out.getvalue())

    def as_json(v: dict[str, Any]) -> bytes:
        return json.dumps(v, default=str).encode()

    avro_items, json_items = records(avro), records(as_json)
    decoder = RecordDecoder({TOPIC: TopicFormat(value="avro")}, client)
    await decoder.decode(avro_items[0])  # the one fetch: then the cache, as in a worker

    async def decode() -> None:
        await decoder.decode_all(avro_items)

    async def decode_and_envelope() -> None:
        for item in await decoder.decode_all(avro_items):
            record_envelope(item.record)

    async def today() -> None:
        for item in json_items:
            record_envelope(item.record)

    size = statistics.mean(len(avro(value(n))) for n in range(1000))
    print(f"{RECORDS:,} records, values of {size:.0f} bytes on average (wire format), {RUNS} runs")
    for name, run in [
        ("avro: decode", decode),
        ("avro: decode + envelope", decode_and_envelope),
        ("json (today): envelope", today),
    ]:
        runs = await timed(run)
        print(
            f"{name:<26} {min(runs):6.2f} / {statistics.median(runs):6.2f} / "
            f"{max(runs):6.2f} µs per record (min/median/max)"
        )
    print(f"registry requests: {client.fetches}")
    await decoder.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", help="a schema registry's Confluent-compatible API URL")
    asyncio.run(main(parser.parse_args().registry))
