"""Per-key ordering's cost: the same records to an ordered and to an unordered REST destination.

``python -m benchmarks.ordering [--rounds 3] [--keys 5] [--updates 50] [--delay 0.05]`` on the
running local stack. Each trial has its own topic (3 partitions), consumer group, workflow
queue and destination; its ``keys × updates`` records (updates of each key interleaved) are
produced before Courier starts, in this process (ingest, the workflow worker and the
destination's worker, as ``courier run``). The destination is a REST endpoint of this
process's receiver (``courier_devtools.receiver``) answering 200 after ``--delay`` seconds, with
``max_concurrency`` 16 and no rate limit. Per round, ``ordering: key`` and ``ordering: none``
run one after the other (the order swapped every other round).

Measured at the receiver: records/s = (N − 1) / (last effect − first effect); per key, its
updates/s the same way over its own effects; and whether every key's effects came in offset
order. Printed as a Markdown table with min/median/max over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from temporalio.client import Client

from benchmarks.kafka_io import create_topic, delete_topic
from courier.app.service import run_service
from courier.config.model import parse_config
from courier_devtools.receiver import Receiver
from courier_devtools.stack.settings import StackSettings, settings_from_env
from ingest.consumer import Ingest


@dataclass(frozen=True)
class Trial:
    """One trial's figures."""

    ordering: str
    rate: float
    key_rate: float
    """Median over the keys of each key's updates/s."""
    in_order: bool


async def trial(
    client: Client, settings: StackSettings, ordering: str, keys: int, updates: int, delay: float
) -> Trial:
    unique = uuid.uuid4().hex[:10]
    topic, name = f"bench-order-{unique}", f"api-{unique}"
    async with Receiver() as receiver:
        receiver.script("/", delay=delay)
        config = parse_config(
            {
                "kafka": {
                    "bootstrap_servers": settings.kafka_bootstrap,
                    "topics": [topic],
                    "group": f"bench-{unique}",
                },
                "temporal": {
                    "address": settings.temporal_address,
                    "workflow_task_queue": f"courier-workflows-{unique}",
                },
                "destinations": [
                    {
                        "name": name,
                        "kind": "rest",
                        "url": f"{receiver.url}/{{key}}",
                        "ordering": ordering,
                    }
                ],
                "routes": {"default": name},
            },
            environ={},
        )
        await create_topic(settings.kafka_bootstrap, topic, 3)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await producer.start()
        expected: dict[str, list[int]] = defaultdict(list)
        try:
            for i in range(updates):
                for k in range(keys):
                    meta = await producer.send_and_wait(
                        topic, key=f"k{k}".encode(), value=json.dumps({"u": i}).encode()
                    )
                    expected[f"k{k}"].append(meta.offset)
        finally:
            await producer.stop()
        total = keys * updates
        stop = asyncio.Event()
        service = asyncio.create_task(
            run_service(
                client,
                config,
                ingest=Ingest(config, client),
                destinations=[name],
                workflows=True,
                stop=stop,
            )
        )
        try:
            while receiver.effects() < total:
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await service
            await delete_topic(settings.kafka_bootstrap, topic)
        effects = receiver.effect_requests()
        times = [r.time for r in effects]
        by_key: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for r in effects:
            envelope = json.loads(r.body)
            by_key[envelope["key"]].append((r.time, envelope["offset"]))
        key_rates = [(len(v) - 1) / (v[-1][0] - v[0][0]) for v in by_key.values()]
        in_order = all([o for _, o in v] == expected[k] for k, v in by_key.items())
        return Trial(
            ordering=ordering,
            rate=(total - 1) / (max(times) - min(times)),
            key_rate=statistics.median(key_rates),
            in_order=in_order,
        )


def spread(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args(argv)
    settings = settings_from_env()
    client = await Client.connect(settings.temporal_address)
    trials: dict[str, list[Trial]] = defaultdict(list)
    for round_ in range(args.rounds):
        variants = ["key", "none"] if round_ % 2 == 0 else ["none", "key"]
        for ordering in variants:
            result = await trial(client, settings, ordering, args.keys, args.updates, args.delay)
            trials[ordering].append(result)
            print(f"round {round_ + 1} ordering {ordering}: {result}", flush=True)
    rows: list[Any] = []
    for ordering in ("key", "none"):
        found = trials[ordering]
        rows.append(
            f"| `{ordering}` | {spread([t.rate for t in found])} | "
            f"{spread([t.key_rate for t in found])} | "
            f"{sum(t.in_order for t in found)} of {len(found)} |"
        )
    print(
        f"\n{args.keys} keys × {args.updates} updates, answers after {args.delay * 1000:.0f} ms, "
        f"{args.rounds} rounds (min / median / max)\n\n"
        "| ordering | records/s | one key's updates/s | runs with every key in order |\n"
        "|---|---|---|---|\n" + "\n".join(rows)
    )


if __name__ == "__main__":
    asyncio.run(main())
