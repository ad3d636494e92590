"""A topic deleted and created again under the same name: its new records are new records.

Offsets of the new topic restart at 0, so identities built from the topic name would collide
with the old records' and be dropped as duplicates. Identity is the topic ID.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from courier_devtools.tcp_proxy import tcp_proxy
from courier_devtools.topics import create_topic, produce, recreate_topic, topic_id
from tests.integration.harness import (
    committed_offsets,
    courier_running,
    eventually,
    file_config,
)

pytestmark = pytest.mark.integration


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_recreated_while_ingest_is_stopped(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = file_config(stack_settings, unique, out)
    bootstrap, topic = stack_settings.kafka_bootstrap, config.kafka.topics[0]
    await create_topic(bootstrap, topic, partitions=1)
    old_id = await topic_id(bootstrap, topic)
    await produce(bootstrap, topic, [(f"old-{i}".encode(), b"{}") for i in range(5)])
    async with courier_running(temporal_client, config):
        await eventually(lambda: _count(out, 5))
    assert await committed_offsets(bootstrap, config.kafka.group, topic, 1) == [5]

    await recreate_topic(bootstrap, topic, partitions=1)
    new_id = await topic_id(bootstrap, topic)
    await produce(bootstrap, topic, [(f"new-{i}".encode(), b"{}") for i in range(7)])
    async with courier_running(temporal_client, config):
        await eventually(lambda: _count(out, 12))
    assert await committed_offsets(bootstrap, config.kafka.group, topic, 1) == [7]

    records = lines(out)
    assert sorted(r["key"] for r in records) == sorted(
        [f"old-{i}" for i in range(5)] + [f"new-{i}" for i in range(7)]
    )
    assert new_id != old_id
    assert {r["topic_id"] for r in records if r["key"].startswith("new-")} == {new_id}
    assert len({r["idempotency_key"] for r in records}) == 12


async def test_recreated_while_ingest_runs(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out.jsonl"
    config = file_config(stack_settings, unique, out, kafka={"metadata_refresh": "1s"})
    bootstrap, topic = stack_settings.kafka_bootstrap, config.kafka.topics[0]
    await create_topic(bootstrap, topic, partitions=1)
    await produce(bootstrap, topic, [(f"old-{i}".encode(), b"{}") for i in range(5)])
    caplog.set_level(logging.INFO, logger="courier.ingest")
    async with courier_running(temporal_client, config):
        await eventually(lambda: _count(out, 5))
        await recreate_topic(bootstrap, topic, partitions=1)
        await produce(bootstrap, topic, [(f"new-{i}".encode(), b"{}") for i in range(6)])
        await eventually(lambda: _count(out, 11), timeout=60)
    assert await committed_offsets(bootstrap, config.kafka.group, topic, 1) == [6]

    records = lines(out)
    assert sorted(r["key"] for r in records) == sorted(
        [f"old-{i}" for i in range(5)] + [f"new-{i}" for i in range(6)]
    )
    assert len({r["idempotency_key"] for r in records}) == 11
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"topic {topic} was deleted and created again" in w for w in warnings), warnings


@pytest.mark.parametrize("mode", ["per_record", "batch"])
async def test_recreated_with_hand_offs_in_flight(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path, mode: str
) -> None:
    """Temporal unreachable for ingest; the topic is recreated under its fetched records.

    The old topic's hand-offs finish once Temporal is back, after the name belongs to the new
    topic: no offset of theirs may be taken for the new topic's (it would skip the new records
    below it), so every record of the new topic is exported and its offsets all committed.
    """
    out = tmp_path / "out.jsonl"
    config = file_config(
        stack_settings,
        unique,
        out,
        kafka={"metadata_refresh": "1s"},
        ingest={"mode": mode, "max_wait": "200ms"},
    )
    bootstrap, topic = stack_settings.kafka_bootstrap, config.kafka.topics[0]
    await create_topic(bootstrap, topic, partitions=1)
    async with (
        tcp_proxy(stack_settings.host, stack_settings.temporal_port) as temporal,
        courier_running(temporal_client, config, ingest=False),
    ):
        ingest_client = await Client.connect(
            temporal.address, namespace=stack_settings.temporal_namespace
        )
        await temporal.cut()
        async with courier_running(ingest_client, config, workers=False) as ingest:
            assert ingest is not None
            await produce(bootstrap, topic, [(f"old-{i}".encode(), b"{}") for i in range(50)])
            await eventually(lambda: _in_flight(ingest), timeout=30)
            await recreate_topic(bootstrap, topic, partitions=1)
            await produce(bootstrap, topic, [(f"new-{i}".encode(), b"{}") for i in range(60)])
            await asyncio.sleep(2)  # the consumer's metadata (refreshed every 1 s) sees the change
            await temporal.restore()
            expected = {f"new-{i}" for i in range(60)}
            await eventually(lambda: _exported(out, expected), timeout=120)
            await eventually(
                lambda: _committed(bootstrap, config.kafka.group, topic, [60]), timeout=30
            )
    assert await committed_offsets(bootstrap, config.kafka.group, topic, 1) == [60]


async def _in_flight(ingest: Any) -> bool:
    return bool(ingest.tracker.in_flight())


async def _exported(path: Path, keys: set[str]) -> bool:
    return keys <= {r["key"] for r in lines(path)}


async def _committed(bootstrap: str, group: str, topic: str, expected: list[int]) -> bool:
    return await committed_offsets(bootstrap, group, topic, len(expected)) == expected


async def _count(path: Path, n: int) -> bool:
    return len(lines(path)) >= n


async def test_ingest_never_creates_a_missing_topic(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = file_config(
        stack_settings, unique, tmp_path / "o", kafka={"metadata_refresh": "500ms"}
    )
    topic = config.kafka.topics[0]
    caplog.set_level(logging.INFO, logger="courier.ingest")
    async with courier_running(temporal_client, config, workers=False):
        await eventually(lambda: _warned(caplog, f"topic {topic} does not exist"))
        await asyncio.sleep(2)  # several metadata refreshes of the consumer
    with pytest.raises(LookupError):
        await topic_id(stack_settings.kafka_bootstrap, topic)
    warnings = [r for r in caplog.records if "does not exist" in r.getMessage()]
    assert len(warnings) == 1, "one warning, not a flood"


async def _warned(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)
