"""A destination that cannot open: its worker keeps serving the others and says why, and the
destination's records wait in Temporal (no failed attempts) until a worker can open it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from courier.ops.status import destination_statuses
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import (
    courier_running,
    eventually,
    pipeline_config,
    wait_for_workflows,
)
from worker import run_workers

pytestmark = pytest.mark.integration


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_destination_that_cannot_open_blocks_nothing_else(
    stack_settings: Any,
    temporal_client: Client,
    pg_pool: Any,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out.jsonl"
    table = f"lifecycle_{unique}"
    file_dest = {"name": f"file-{unique}", "kind": "file", "path": str(out)}
    pg_dest = {
        "name": f"pg-{unique}",
        "kind": "postgres",
        "dsn": f"postgresql://courier@127.0.0.1:{closed_port()}/courier",
        "table": table,
    }
    routes = {"rules": [{"prefix": "pg-", "destination": f"pg-{unique}"}]}
    routes["default"] = f"file-{unique}"  # type: ignore[assignment]
    broken = pipeline_config(
        stack_settings, unique, destinations=[file_dest, pg_dest], routes=routes
    )
    fixed = pipeline_config(
        stack_settings,
        unique,
        destinations=[file_dest, {**pg_dest, "dsn": stack_settings.postgres_dsn}],
        routes=routes,
    )
    topic = broken.kafka.topics[0]
    await create_topic(stack_settings.kafka_bootstrap, topic)
    records = [
        (f"{kind}-{i}".encode(), json.dumps({"n": i}).encode())
        for kind in ("pg", "file")
        for i in range(20)
    ]
    pg_query = f"CourierDestination = 'pg-{unique}'"
    caplog.set_level(logging.WARNING, logger="courier.worker")

    async with courier_running(temporal_client, broken):
        await produce(stack_settings.kafka_bootstrap, topic, records)
        # The healthy destination gets all its records while the other cannot open.
        await wait_for_workflows(temporal_client, f"CourierDestination = 'file-{unique}'", 20)
        assert len(out.read_text().splitlines()) == 20

        async def pg_not_connected() -> str | None:
            statuses = {s.name: s for s in await destination_statuses(temporal_client, broken)}
            connection = statuses[f"pg-{unique}"].connection
            return connection if connection.startswith("not connected") else None

        shown = await eventually(pg_not_connected)
        assert "cannot reach PostgreSQL" in shown, shown
        # Its records wait in Temporal, not in retries: no export attempt was made.
        running = [wf async for wf in temporal_client.list_workflows(pg_query)]
        assert len(running) == 20
        description = await temporal_client.get_workflow_handle(running[0].id).describe()
        pending = description.raw_description.pending_activities
        assert (
            len(pending) == 1
            and pending[0].attempt == 1
            and not pending[0].HasField("last_failure")
        ), pending
        lines = [r.getMessage() for r in caplog.records if f"pg-{unique}" in r.getMessage()]
        assert lines and "cannot open the postgres destination (attempt 1)" in lines[0], lines
        assert "its records wait in Temporal" in lines[0]

        # A worker that can open it (config fixed) exports them; the broken one keeps trying.
        # A second worker process: its own client, so its own identity.
        other_process = await Client.connect(
            stack_settings.temporal_address, identity=f"fixed-worker-{unique}"
        )
        fixed_worker = asyncio.create_task(
            run_workers(other_process, fixed, destinations=[f"pg-{unique}"])
        )
        try:
            await wait_for_workflows(temporal_client, pg_query, 20)

            async def one_of_two_down() -> str | None:
                statuses = {s.name: s for s in await destination_statuses(temporal_client, fixed)}
                connection = statuses[f"pg-{unique}"].connection
                return connection if connection.startswith("not connected (1 of 2)") else None

            await eventually(one_of_two_down)
        finally:
            fixed_worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fixed_worker
    assert await pg_pool.fetchval(f"SELECT count(*) FROM {table}") == 20
    await pg_pool.execute(f"DROP TABLE {table}")
