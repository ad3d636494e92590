"""``courier failures`` groups failed records by destination and reason; ``courier replay``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client, WorkflowExecutionStatus

from courier.config.model import CourierConfig
from courier.ops.failures import find_failures, group
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import courier_running, pipeline_config, wait_for_workflows

pytestmark = pytest.mark.integration

COURIER = str(Path(sys.executable).with_name("courier"))
# The command runs the code under test (a checkout's own, when PYTHONPATH points at it).
PYTHONPATH = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}


async def courier(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        COURIER,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", **PYTHONPATH},
    )
    out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write(config: CourierConfig, path: Path) -> str:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    return str(path)


async def test_failures_grouped_then_replayed(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    async with Receiver() as receiver:
        receiver.script("/down", then=503)
        receiver.script("/bad", then=400)
        down, bad = f"down-{unique}", f"bad-{unique}"
        retry = {"initial_interval": "100ms", "maximum_attempts": 2}
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": down,
                    "kind": "rest",
                    "url": f"{receiver.url}/down/{{key}}",
                    "retry": retry,
                },
                {"name": bad, "kind": "rest", "url": f"{receiver.url}/bad/{{key}}", "retry": retry},
            ],
            routes={"rules": [{"prefix": "bad-", "destination": bad}], "default": down},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=2)
        keys = [f"order-{i}" for i in range(4)] + ["bad-1", "bad-2"]
        await produce(stack_settings.kafka_bootstrap, topic, [(k.encode(), b"{}") for k in keys])
        path = write(config, tmp_path / "courier.yaml")
        query = f"CourierTopic = '{topic}'"
        async with courier_running(temporal_client, config):
            await wait_for_workflows(
                temporal_client, query, 6, status=WorkflowExecutionStatus.FAILED
            )

            groups = group(await find_failures(temporal_client, config))
            assert [(g.destination, g.count) for g in groups] == [(down, 4), (bad, 2)]
            assert "503" in groups[0].reason and "{key}" in groups[0].reason
            assert "400" in groups[1].reason
            assert groups[0].first_seen is not None and groups[0].last_seen is not None
            assert groups[0].first_seen <= groups[0].last_seen
            assert groups[0].example_id.startswith(f"courier/{config.kafka.group}/{topic}@")
            recent = await find_failures(temporal_client, config, since=timedelta(seconds=0))
            assert recent == [], "--since excludes what failed before the period"

            code, out, _ = await courier("failures", "-d", down, "--json", "-c", path)
            assert code == 0
            [only] = json.loads(out)["groups"]
            assert (only["destination"], only["count"], only["workflows"]) == (down, 4, 4)

            code, out, _ = await courier("replay", "-d", down, "-c", path, stdin=b"n\n")
            assert code == 1 and "Replay these 4 failed export workflow(s)?" in out
            assert len(group(await find_failures(temporal_client, config, destination=down))) == 1

            receiver.script("/down", then=200)  # the destination is back
            code, out, err = await courier(
                "replay", "-d", down, "--since", "1h", "--yes", "-c", path
            )
            assert code == 0, err
            assert "replayed 4 of 4" in out
            await wait_for_workflows(
                temporal_client, f"{query} AND CourierDestination = '{down}'", 4
            )

            after = group(await find_failures(temporal_client, config))
            assert [(g.destination, g.count) for g in after] == [(bad, 2)], (
                "replayed records are no longer failures; the other destination's still are"
            )
    assert receiver.effects("/down") == 4
    assert receiver.effects("/bad") == 0


async def test_batch_mode_failures_are_the_records_own_workflows_and_replay_them_alone(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    async with Receiver() as receiver:
        receiver.script("/r/bad", then=400)
        name = f"r-{unique}"
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[{"name": name, "kind": "rest", "url": f"{receiver.url}/r/{{key}}"}],
            routes={"default": name},
            ingest={"mode": "batch"},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        keys = ["ok-1", "bad-1", "ok-2", "bad-2", "bad-3"]
        await produce(stack_settings.kafka_bootstrap, topic, [(k.encode(), b"1") for k in keys])
        query = f"CourierTopic = '{topic}'"
        async with courier_running(temporal_client, config):
            await wait_for_workflows(
                temporal_client, query, 3, status=WorkflowExecutionStatus.FAILED
            )
            await wait_for_workflows(
                temporal_client, f"{query} AND WorkflowType = 'ExportRange'", 1
            )
            exports = await find_failures(temporal_client, config, destination=name)
            [only] = group(exports)
            assert (only.destination, only.count, len(only.workflow_ids)) == (name, 3, 3)
            assert "{key}" in only.reason and "{record}" not in only.reason, only.reason
            assert sorted(r.coordinates for e in exports for r in e.records) == [
                f"{topic}/0/1",
                f"{topic}/0/3",
                f"{topic}/0/4",
            ]
            assert {e.execution.workflow_type for e in exports} == {"ExportRecord"}
            receiver.script("/r/bad", then=200)
            requests = len(receiver.times("/r/"))
            from courier.ops.replay import replay_all

            done: list[str] = []
            failed = await replay_all(
                temporal_client,
                [e.execution for e in exports],
                reason="test",
                on_done=lambda e, err: done.append(e.id),
            )
            assert failed == 0 and len(done) == 3
            await wait_for_workflows(
                temporal_client, f"{query} AND WorkflowType = 'ExportRecord'", 3
            )
            assert await find_failures(temporal_client, config) == []
    assert receiver.effects("/r/") == 5
    assert len(receiver.times("/r/")) == requests + 3, "only the failed records again"
