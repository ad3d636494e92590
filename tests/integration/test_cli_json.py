"""``--json`` of every command that prints a result, run as ``courier`` processes on the stack.

One pipeline (a REST destination, a REST destination that refuses its records, a file) runs in
this process; each command runs as the real ``courier`` command with ``--json`` against its
config file, and its stdout is parsed as one JSON object (shapes: docs/cli-json.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client, WorkflowExecutionStatus

from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import (
    courier_running,
    pipeline_config,
    terminate_running,
    wait_for_workflows,
)

pytestmark = pytest.mark.integration

COURIER = str(Path(sys.executable).with_name("courier"))
# The command runs the code under test (a checkout's own, when PYTHONPATH points at it).
PYTHONPATH = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}


async def courier_json(*args: str, stdin: bytes = b"", code: int = 0) -> tuple[Any, str]:
    """Run ``courier ARGS --json``; its exit code must be ``code``. Returns (its JSON, stderr)."""
    process = await asyncio.create_subprocess_exec(
        COURIER,
        *args,
        "--json",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin", **PYTHONPATH},
    )
    out, err = await process.communicate(stdin)
    assert process.returncode == code, f"{args}: exit {process.returncode}: {err.decode()}"
    document = json.loads(out)
    assert isinstance(document, dict), f"{args}: a JSON object at the top"
    return document, err.decode()


async def test_every_command_prints_one_json_object(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    api, bad, archive = f"api-{unique}", f"bad-{unique}", f"file-{unique}"
    async with Receiver() as receiver:
        receiver.script("/bad", then=400)
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": api,
                    "kind": "rest",
                    "url": f"{receiver.url}/api/{{key}}",
                    "rate_limit": 50,
                },
                {
                    "name": bad,
                    "kind": "rest",
                    "url": f"{receiver.url}/bad/{{key}}",
                    "retry": {"initial_interval": "100ms", "maximum_attempts": 1},
                },
                {"name": archive, "kind": "file", "path": str(tmp_path / "archive.jsonl")},
            ],
            routes={
                "rules": [
                    {"prefix": "order-", "destination": api},
                    {"prefix": "bad-", "destination": bad},
                ],
                "default": archive,
            },
        )
        path = tmp_path / "courier.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
        c = str(path)
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        keys = ["order-0", "order-1", "order-2", "bad-0", "bad-1", "other-0"]
        await produce(stack_settings.kafka_bootstrap, topic, [(k.encode(), b"{}") for k in keys])

        checked, _ = await courier_json("config", "check", "-c", c)
        assert [d["name"] for d in checked["destinations"]] == [api, bad, archive]
        assert checked["destinations"][0]["rate_limit"] == 50.0
        assert checked["routes"]["default"] == archive

        routed, _ = await courier_json("route", "bad-7", "-c", c)
        assert (routed["action"], routed["destination"]) == ("export", bad)

        record = tmp_path / "record.json"
        record.write_text(json.dumps({"key": "other-9", "value": {"n": 9}, "topic": topic}))
        mapped, _ = await courier_json("map", "-d", archive, "--record", str(record), "-c", c)
        assert (mapped["destination"], mapped["kind"]) == (archive, "file")

        query = f"CourierTopic = '{topic}'"
        try:
            async with courier_running(temporal_client, config):
                await wait_for_workflows(temporal_client, query, 4)
                await wait_for_workflows(
                    temporal_client, query, 2, status=WorkflowExecutionStatus.FAILED
                )

                status, _ = await courier_json("status", "-c", c)
                by_name = {d["name"]: d for d in status["destinations"]}
                assert list(by_name) == [api, bad, archive]
                for dest in by_name.values():
                    assert isinstance(dest["backlog"], int) and dest["backlog"] >= 0
                    assert isinstance(dest["backlog_age_s"], int | float)
                assert (by_name[api]["completed"], by_name[archive]["completed"]) == (3, 1)
                assert by_name[bad]["failed"] == 2 and by_name[bad]["oldest_failure"]
                assert by_name[api]["rate_limit"] == 50.0
                assert by_name[api]["connection"] == "connected"
                assert status["temporal"]["address"] == stack_settings.temporal_address

                limited, _ = await courier_json("limit", api, "7", "-c", c)
                assert (limited["rate_limit"], limited["rate_limit_source"]) == (7.0, "override")
                reset, _ = await courier_json("limit", api, "default", "-c", c)
                assert (reset["requested"], reset["rate_limit_source"]) == (None, "worker")

                failed, _ = await courier_json("failures", "-c", c)
                assert (failed["records"], failed["workflows"]) == (2, 2)
                [group] = failed["groups"]
                assert (group["destination"], group["count"]) == (bad, 2)
                assert "400" in group["reason"]

                shown, _ = await courier_json("show", f"{topic}/0/0", "-c", c)
                assert (shown["destination"], shown["status"]) == (api, "COMPLETED")

                declined, err = await courier_json(
                    "replay", "-d", bad, "-c", c, stdin=b"n\n", code=1
                )
                assert declined["declined"] is True and declined["failed_exports"] == 2
                assert "Replay these 2 failed export workflow(s)?" in err, "asked on stderr"

                receiver.script("/bad", then=200)  # the destination is back
                replayed, _ = await courier_json("replay", "-d", bad, "--yes", "-c", c)
                assert (replayed["replayed"], replayed["errors"]) == (2, [])
                await wait_for_workflows(
                    temporal_client, f"{query} AND CourierDestination = '{bad}'", 2
                )

                redriven, _ = await courier_json(
                    "redrive", "-d", archive, "--from-offset", f"{topic}:0:0", "--dry-run", "-c", c
                )
                assert (redriven["read"], redriven["routed"], redriven["started"]) == (6, 1, 0)
                assert redriven["dry_run"] is True
        finally:
            await terminate_running(temporal_client, config.temporal.workflow_task_queue)
    assert receiver.effects("/bad/") == 2
