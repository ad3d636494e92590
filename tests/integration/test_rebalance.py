"""A second ingest joining the group takes partitions over without loss or double effects."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from courier.app.service import run_service
from courier_devtools.topics import create_topic, produce
from ingest.consumer import Ingest
from tests.integration.harness import (
    courier_running,
    eventually,
    pipeline_config,
    wait_for_workflows,
)

pytestmark = pytest.mark.integration

RECORDS = 150


async def test_rebalance_to_a_second_ingest_loses_and_repeats_nothing(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=[{"name": f"file-{unique}", "kind": "file", "path": str(out)}],
        routes={"default": f"file-{unique}"},
        kafka={"max_in_flight": 8},
    )
    topic = config.kafka.topics[0]
    await create_topic(stack_settings.kafka_bootstrap, topic)
    records = [(f"k{i}".encode(), b"{}") for i in range(RECORDS)]
    await produce(stack_settings.kafka_bootstrap, topic, records[:60])

    async with courier_running(temporal_client, config) as first:
        assert first is not None
        await eventually(lambda: _started(first, 60), timeout=30)
        second = Ingest(config, temporal_client)
        stop_second = asyncio.Event()
        joined = asyncio.create_task(
            run_service(temporal_client, config, ingest=second, stop=stop_second)
        )
        try:
            # The group rebalances: the first ingest gives partitions up, the second takes them.
            await eventually(lambda: _owns_some(second), timeout=30)
            await eventually(lambda: _owns_some(first), timeout=30)
            await produce(stack_settings.kafka_bootstrap, topic, records[60:])
            await wait_for_workflows(temporal_client, f"CourierTopic = '{topic}'", RECORDS)
            await eventually(lambda: _handed_off_all(first, second), timeout=30)
        finally:
            stop_second.set()
            await joined

    assert second.counts["started"] > 0, "the second ingest should have taken partitions over"
    assert first.counts["started"] + second.counts["started"] == RECORDS
    assert (await temporal_client.count_workflows(f"CourierTopic = '{topic}'")).count == RECORDS
    lines = out.read_text().splitlines()
    assert len(lines) == RECORDS and len(set(lines)) == RECORDS


async def _started(ingest: Ingest, n: int) -> bool:
    return ingest.counts["started"] >= n


async def _owns_some(ingest: Ingest) -> bool:
    return bool(ingest.assignment())


async def _handed_off_all(first: Ingest, second: Ingest) -> bool:
    return first.counts["started"] + second.counts["started"] >= RECORDS
