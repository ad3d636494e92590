"""Ingest killed between starting workflows and committing offsets loses nothing and
duplicates nothing; SIGTERM commits exactly what was handed off."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from temporalio.client import Client

from courier_devtools.topics import create_topic, produce
from tests.integration.harness import (
    courier_running,
    eventually,
    pipeline_config,
    wait_for_workflows,
)

pytestmark = pytest.mark.integration

RECORDS = 60


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def config_data(settings: Any, unique: str, out: Path, commit_interval: str) -> dict[str, Any]:
    return {
        "kafka": {
            "bootstrap_servers": settings.kafka_bootstrap,
            "topics": [f"t-{unique}"],
            "group": f"g-{unique}",
            "commit_interval": commit_interval,
        },
        "temporal": {
            "address": settings.temporal_address,
            "workflow_task_queue": f"courier-workflows-{unique}",
        },
        "destinations": [{"name": f"file-{unique}", "kind": "file", "path": str(out)}],
        "routes": {"default": f"file-{unique}"},
    }


async def start_ingest(config_file: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "courier.cli",
        "ingest",
        "--config",
        str(config_file),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("how", ["kill", "sigterm"])
async def test_ingest_stopped_after_starts_loses_and_repeats_nothing(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path, how: str
) -> None:
    out = tmp_path / "out.jsonl"
    # With SIGKILL nothing may be committed in time: commits are an hour apart.
    data = config_data(stack_settings, unique, out, "1h" if how == "kill" else "200ms")
    config_file = tmp_path / "courier.yaml"
    config_file.write_text(yaml.safe_dump(data))
    topic, group = f"t-{unique}", f"g-{unique}"
    await create_topic(stack_settings.kafka_bootstrap, topic)
    await produce(
        stack_settings.kafka_bootstrap, topic, [(f"k{i}".encode(), b"{}") for i in range(RECORDS)]
    )
    query = f"CourierTopic = '{topic}'"

    process = await start_ingest(config_file)
    try:
        await wait_for_workflows(temporal_client, query, RECORDS, status=None, timeout=60)
        if how == "kill":
            process.kill()
        else:
            await asyncio.sleep(1)  # let a periodic commit happen too
            process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    offsets = await committed(stack_settings.kafka_bootstrap, group)
    if how == "kill":
        assert returncode == -signal.SIGKILL
        assert sum(offsets.values()) == 0, f"offsets committed before the kill: {offsets}"
    else:
        assert returncode == 0, (await process.stderr.read()).decode()[-2000:]  # type: ignore[union-attr]
        assert sum(offsets.values()) == RECORDS, (
            f"SIGTERM should commit every handed-off offset: {offsets}"
        )

    # A new ingest (with workers) reads whatever is uncommitted again: it finds every workflow
    # already started, starts none, and every record is exported exactly once.
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=data["destinations"],
        routes=data["routes"],
        kafka={"commit_interval": "200ms"},
    )
    async with courier_running(temporal_client, config) as ingest:
        assert ingest is not None
        await wait_for_workflows(temporal_client, query, RECORDS)
        if how == "kill":
            await eventually(lambda: _handed_off(ingest, RECORDS), timeout=60)
    assert ingest.counts["started"] == 0
    assert ingest.counts["existing"] == (RECORDS if how == "kill" else 0)
    assert (await temporal_client.count_workflows(query)).count == RECORDS
    assert len(out.read_text().splitlines()) == RECORDS
    assert sum((await committed(stack_settings.kafka_bootstrap, group)).values()) == RECORDS


async def _handed_off(ingest: Any, n: int) -> bool:
    return (
        ingest.counts["existing"] + ingest.counts["started"] >= n
        and not ingest.tracker.committable()
    )
