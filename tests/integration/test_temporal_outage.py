"""Temporal down for longer than max.poll.interval: ingest keeps polling, keeps its partitions
(no rebalance), and once Temporal is back every record is exported exactly once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from temporalio.client import Client

from courier_devtools import stack
from courier_devtools.topics import create_topic, produce
from ingest.consumer import Ingest
from tests.integration.harness import courier_running, eventually, pipeline_config

pytestmark = pytest.mark.integration

MAX_POLL_INTERVAL_S = 10.0
OUTAGE_S = 2.5 * MAX_POLL_INTERVAL_S
"""How long Temporal stays down: past max.poll.interval twice, with room to spare."""
BEFORE, DURING = 5, 10


@dataclass(frozen=True)
class Sample:
    """The consumer's group membership and fetch state at one moment of the outage."""

    generation: int
    member_id: str
    assignment: frozenset[Any]
    paused: frozenset[Any]
    idle_s: float
    temporal_up: bool


async def sample(ingest: Ingest, settings: Any) -> Sample:
    consumer = ingest._consumer
    assert consumer is not None
    coordinator = consumer._coordinator
    return Sample(
        generation=coordinator.generation,
        member_id=coordinator.member_id,
        assignment=frozenset(consumer.assignment()),
        paused=frozenset(consumer.paused()),
        idle_s=consumer._subscription.fetcher_idle_time,
        temporal_up=await _accepts_connections(settings.host, settings.temporal_port),
    )


async def watch(ingest: Ingest, settings: Any, seconds: float) -> list[Sample]:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(await sample(ingest, settings))
        await asyncio.sleep(0.5)
    samples.append(await sample(ingest, settings))
    return samples


async def _accepts_connections(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


def exported_keys(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def test_ingest_stays_in_its_group_while_temporal_is_down(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="courier.ingest")
    # aiokafka's own account of the group (the stack's start quiets the "aiokafka" logger).
    caplog.set_level(logging.INFO, logger="aiokafka.consumer.group_coordinator")
    out = tmp_path / "out.jsonl"
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=[{"name": f"file-{unique}", "kind": "file", "path": str(out)}],
        routes={"default": f"file-{unique}"},
        # A window smaller than the records of the outage: some wait in the buffer, paused.
        kafka={"max_poll_interval": f"{MAX_POLL_INTERVAL_S:.0f}s", "max_in_flight": 4},
    )
    topic, group = config.kafka.topics[0], config.kafka.group
    bootstrap = stack_settings.kafka_bootstrap
    await create_topic(bootstrap, topic, partitions=3)
    keys = [f"k{i}" for i in range(BEFORE + DURING)]
    sent = await produce(bootstrap, topic, [(k.encode(), b"{}") for k in keys[:BEFORE]])

    async with courier_running(temporal_client, config) as ingest:
        assert ingest is not None
        await eventually(lambda: _exported(out, BEFORE), timeout=60)
        before = await sample(ingest, stack_settings)
        assert before.assignment, "the ingest owns no partition"
        seen = len(caplog.records)  # the group's history from here on: the outage and after

        try:
            await asyncio.to_thread(stack.stop, ["temporal"], settings=stack_settings, echo=None)
            sent += await produce(bootstrap, topic, [(k.encode(), b"{}") for k in keys[BEFORE:]])
            outage = await watch(ingest, stack_settings, OUTAGE_S)
            started_during_outage = ingest.counts["started"]
        finally:
            await stack.start_async(["temporal"], settings=stack_settings)

        await eventually(lambda: _exported(out, len(keys)), timeout=120)
        ends: dict[int, int] = {}
        for meta in sent:
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        await eventually(lambda: _committed_up_to(bootstrap, group, ends), timeout=30)
        after = await sample(ingest, stack_settings)
        messages = [r.getMessage() for r in caplog.records[seen:]]

    # Another test session sharing the stack may start Temporal again under us (its `stack`
    # fixture starts whatever is down): then this test proves nothing.
    assert not any(s.temporal_up for s in outage), "Temporal was started again during the outage"
    # The consumer kept polling, and kept its membership and its partitions throughout.
    assert max(s.idle_s for s in outage) < MAX_POLL_INTERVAL_S / 2
    assert {(s.generation, s.member_id, s.assignment) for s in [*outage, after]} == {
        (before.generation, before.member_id, before.assignment)
    }
    assert not [m for m in messages if "partitions revoked" in m or "Revoking" in m]
    # The records of the outage waited (nothing could start), some paused in the buffer.
    assert started_during_outage == BEFORE
    assert any(s.paused for s in outage), "no partition was paused during the outage"
    # Every record exported exactly once, and its offset committed.
    assert sorted(exported_keys(out)) == sorted(keys)
    assert ingest.counts["started"] + ingest.counts["existing"] == len(keys)
    assert ingest.counts["failed"] == 0
    assert (await committed(bootstrap, group)) == ends


async def _exported(path: Path, n: int) -> bool:
    return len(exported_keys(path)) >= n


async def _committed_up_to(bootstrap: str, group: str, ends: dict[int, int]) -> bool:
    return await committed(bootstrap, group) == ends
