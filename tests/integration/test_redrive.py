"""``courier redrive``: one destination's records exported again from Kafka, by offset or time."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client

from courier.config.model import CourierConfig
from courier.core.ids import redrive_prefix, workflow_id
from courier.ops.redrive import Redrive, RedriveSummary, Start
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce, topic_id
from tests.integration.harness import courier_running, pipeline_config, wait_for_workflows

pytestmark = pytest.mark.integration

COURIER = str(Path(sys.executable).with_name("courier"))


def two_destinations(
    stack_settings: Any, unique: str, receiver: Receiver, ingest: dict[str, Any] | None = None
) -> CourierConfig:
    """Keys ``a-…`` go to ``a-<unique>`` (REST /a), all others to ``b-<unique>`` (REST /b)."""
    return pipeline_config(
        stack_settings,
        unique,
        destinations=[
            {"name": f"a-{unique}", "kind": "rest", "url": f"{receiver.url}/a/{{key}}"},
            {"name": f"b-{unique}", "kind": "rest", "url": f"{receiver.url}/b/{{key}}"},
        ],
        routes={
            "rules": [{"prefix": "a-", "destination": f"a-{unique}"}],
            "default": f"b-{unique}",
        },
        ingest=ingest,
    )


async def redrive(client: Client, config: CourierConfig, **kwargs: Any) -> RedriveSummary:
    async with Redrive(client, config, destination=config.destinations[0].name, **kwargs) as job:
        await job.plan()
        return await job.run()


async def count(client: Client, query: str) -> int:
    await asyncio.sleep(2)  # visibility is eventually consistent
    return (await client.count_workflows(query)).count


@pytest.mark.parametrize("mode", ["per_record", "batch"])
async def test_redrive_by_offset_keeps_keys_and_resumes(
    stack_settings: Any, temporal_client: Client, unique: str, mode: str
) -> None:
    async with Receiver() as receiver:
        config = two_destinations(stack_settings, unique, receiver, ingest={"mode": mode})
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=2)
        records = [(f"{'a' if i % 2 else 'b'}-{i}".encode(), b'{"n": %d}' % i) for i in range(40)]
        sent = await produce(stack_settings.kafka_bootstrap, topic, records)
        tid = await topic_id(stack_settings.kafka_bootstrap, topic)
        async with courier_running(temporal_client, config):
            await _all_exported(receiver, "/a/", 20)
            await _all_exported(receiver, "/b/", 20)
            originals = {r.idempotency_key for r in receiver.effect_requests("/a/")}

            # Partition 0 from offset 3, partition 1 from its start.
            first = [Start(topic, 0, 3), Start(topic, 1, 0)]
            expected = [
                m
                for m, (k, _) in zip(sent, records, strict=True)
                if k.startswith(b"a-") and (m.partition == 1 or m.offset >= 3)
            ]
            summary = await redrive(temporal_client, config, run_id="r1", starts=first)
            assert summary.read == sum(1 for m in sent if m.partition == 1 or m.offset >= 3)
            assert summary.routed == len(expected) > 0
            assert (summary.started, summary.already_present) == (len(expected), 0)
            await _requests(receiver, "/a/", 20 + len(expected))
            again = [r for r in receiver.requests if r.path.startswith("/a/")][20:]
            assert (
                {r.idempotency_key for r in again}
                == {
                    workflow_id(
                        group=config.kafka.group,
                        topic=topic,
                        topic_id=tid,
                        partition=m.partition,
                        offset=m.offset,
                    )
                    for m in expected
                }
                <= originals
            ), "a re-drive keeps each record's own idempotency key"
            assert all(r.duplicate for r in again), "so the endpoint sees repeats, no new effect"
            assert len(receiver.times("/b/")) == 20, "other destinations are untouched"

            resumed = await redrive(temporal_client, config, run_id="r1", starts=first)
            assert (resumed.routed, resumed.started) == (len(expected), 0)
            assert resumed.already_present == len(expected)

            fresh = await redrive(
                temporal_client, config, run_id="r2", starts=first, new_idempotency_key=True
            )
            assert fresh.started == len(expected)
            await _all_exported(receiver, "/a/", 20 + len(expected))
            new_keys = {r.idempotency_key or "" for r in receiver.effect_requests("/a/")[20:]}
            assert len(new_keys) == len(expected)
            assert all(k.startswith(redrive_prefix(config.kafka.group, "r2")) for k in new_keys)

        prefix = redrive_prefix(config.kafka.group, "r1")
        per_run = len(expected) if mode == "per_record" else 2  # batch: one range per partition
        assert await count(temporal_client, f"WorkflowId STARTS_WITH '{prefix}'") == per_run
    assert len(receiver.times("/a/")) == 20 + 2 * len(expected), "the resumed run sent nothing"


async def test_redrive_by_time_window_and_dry_run(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    async with Receiver() as receiver:
        config = two_destinations(stack_settings, unique, receiver)
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        batches = []
        for batch in range(3):
            batches.append(
                await produce(
                    stack_settings.kafka_bootstrap,
                    topic,
                    [(f"a-{batch}-{i}".encode(), b"x") for i in range(5)] + [(b"b-0", b"y")],
                )
            )
            await asyncio.sleep(1.2)
        since = datetime.fromtimestamp(batches[1][0].timestamp / 1000, UTC)
        until = datetime.fromtimestamp(batches[2][0].timestamp / 1000, UTC)

        config_file = tmp_path / "courier.yaml"
        config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
        process = await asyncio.create_subprocess_exec(
            COURIER,
            "redrive",
            "-c",
            str(config_file),
            "-d",
            config.destinations[0].name,
            "--from-time",
            since.isoformat(),
            "--to-time",
            until.isoformat().replace("+00:00", "Z"),
            "--run-id",
            "dry",
            "--dry-run",
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        dry = json.loads(out)
        assert (dry["read"], dry["routed"], dry["started"]) == (6, 5, 0)
        assert [r["coordinates"] for r in dry["first"]] == [
            f"{topic}/0/{m.offset}" for m in batches[1][:5]
        ]
        assert dry["first"][0]["key"] == "a-1-0"

        async with courier_running(temporal_client, config, ingest=False):
            summary = await redrive(
                temporal_client, config, run_id="window", from_time=since, to_time=until
            )
            assert (summary.read, summary.routed, summary.started) == (6, 5, 5)
            await _requests(receiver, "/a/", 5)
            assert sorted(r.path for r in receiver.requests) == sorted(
                f"/a/a-1-{i}" for i in range(5)
            ), "only the records of the window, only the destination's"
            everything = f"WorkflowId STARTS_WITH '{redrive_prefix(config.kafka.group)}'"
            await wait_for_workflows(temporal_client, everything, 5)
        assert await count(temporal_client, everything) == 5, "the dry run started nothing"


async def test_redrive_says_what_is_wrong(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    async with Receiver() as receiver:
        config = two_destinations(stack_settings, unique, receiver)
    config_file = tmp_path / "courier.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    name = config.destinations[0].name
    cases = [
        (["--from-offset", "nope"], "is not TOPIC:PARTITION:OFFSET"),
        (["--from-time", "yesterday"], "is not an ISO 8601 time"),
        ([], "give either --from-offset"),
        (["--from-offset", f"missing-{unique}:0:0"], f"topic missing-{unique} does not exist"),
        (["--from-time", "2026-01-01T00:00:00Z", "--run-id", "a/b"], "run ID 'a/b' is not valid"),
    ]
    for args, message in cases:
        process = await asyncio.create_subprocess_exec(
            COURIER,
            "redrive",
            "-c",
            str(config_file),
            "-d",
            name,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        lines = err.decode().strip().splitlines()
        assert process.returncode != 0 and len(lines) == 1, (args, lines)
        assert lines[0].startswith("error: ") and message in lines[0], (args, lines)


async def _requests(receiver: Receiver, prefix: str, expected: int, timeout: float = 60) -> None:
    for _ in range(int(timeout * 4)):
        if len(receiver.times(prefix)) >= expected:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{len(receiver.times(prefix))} of {expected} requests to {prefix}")


async def _all_exported(receiver: Receiver, prefix: str, expected: int) -> None:
    for _ in range(240):
        if receiver.effects(prefix) >= expected:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{receiver.effects(prefix)} of {expected} effects at {prefix}")


async def test_redrive_starts_at_the_destination_rate(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    name = f"slow-{unique}"
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=[
            {"name": name, "kind": "rest", "url": "http://127.0.0.1:9/{key}", "rate_limit": 5}
        ],
        routes={"default": name},
    )
    topic = config.kafka.topics[0]
    await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
    await produce(stack_settings.kafka_bootstrap, topic, [(b"k%d" % i, b"v") for i in range(11)])
    started = time.monotonic()
    summary = await redrive(temporal_client, config, run_id="paced", starts=[Start(topic, 0, 0)])
    elapsed = time.monotonic() - started
    try:
        assert summary.rate == 5 and summary.started == 11
        assert elapsed >= 10 / 5 - 0.1, "11 starts at 5/s take at least 2 s"
    finally:  # no worker runs them: end them
        prefix = redrive_prefix(config.kafka.group, "paced")
        async for execution in temporal_client.list_workflows(f"WorkflowId STARTS_WITH '{prefix}'"):
            await temporal_client.get_workflow_handle(execution.id).terminate("test over")
