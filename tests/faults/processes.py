"""Courier's commands as real processes: started from a config file, killed by their own PID.

Each process writes its log (stdout and stderr) to a file of the test's ``tmp_path``; failure
messages quote the tails. Rich, which formats Courier's logs, wraps at the terminal width: the
processes get ``COLUMNS=400`` so that one log record stays one line of the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from courier.config.model import parse_config

LOG_COLUMNS = "400"


def config_data(
    settings: Any,
    unique: str,
    *,
    destinations: list[dict[str, Any]],
    routes: dict[str, Any],
    kafka: dict[str, Any] | None = None,
    temporal: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A config (as YAML data) whose topic, group and task queues are this test's own."""
    return {
        "kafka": {
            "bootstrap_servers": settings.kafka_bootstrap,
            "topics": [f"t-{unique}"],
            "group": f"g-{unique}",
            **(kafka or {}),
        },
        "temporal": {
            "address": settings.temporal_address,
            "workflow_task_queue": f"courier-workflows-{unique}",
            **(temporal or {}),
        },
        "ingest": ingest or {},
        "destinations": destinations,
        "routes": routes,
    }


@dataclass
class CourierProcess:
    """One ``courier`` command running as a child process of the test."""

    role: str
    args: list[str]
    log_path: Path
    process: asyncio.subprocess.Process
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def kill(self) -> None:
        """SIGKILL this process (by its PID): no shutdown code runs."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)

    async def wait(self, timeout: float = 30.0) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful shutdown), then SIGKILL if it has not exited within ``timeout``."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                return await self.wait(timeout)
            except TimeoutError:
                self.kill()
        return await self.wait(timeout)

    def state(self) -> str:
        return "running" if self.alive else f"exit {self.process.returncode}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class Fleet:
    """The Courier processes of one test; whatever still runs at the end is stopped by PID."""

    def __init__(self, tmp_path: Path, client: Client) -> None:
        self.dir = tmp_path
        self.client = client
        self.processes: list[CourierProcess] = []

    def write_config(
        self,
        data: dict[str, Any],
        name: str = "courier.yaml",
        *,
        environ: dict[str, str] | None = None,
    ) -> Path:
        """Validate ``data`` as a Courier config and write it to a file for the processes.

        ``environ``: sample values of the ``${NAME}`` references, for the validation only.
        """
        parse_config(data, environ=environ or {})
        path = self.dir / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    async def start(
        self, role: str, *args: str, config: Path, env: dict[str, str] | None = None
    ) -> CourierProcess:
        """Start ``courier ARGS --config CONFIG``; its log goes to ``<role>-<n>.log``."""
        n = sum(1 for p in self.processes if p.role == role)
        log_path = self.dir / f"{role}-{n}.log"
        argv = [*args, "--config", str(config)]
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "courier.cli",
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "COLUMNS": LOG_COLUMNS,
                    **(env or {}),
                },
            )
        started = CourierProcess(role, argv, log_path, process)
        self.processes.append(started)
        return started

    async def ingest(self, config: Path, role: str = "ingest") -> CourierProcess:
        return await self.start(role, "ingest", config=config)

    async def workflows(self, config: Path) -> CourierProcess:
        return await self.start("workflows", "worker", "--workflows", config=config)

    async def worker(
        self, config: Path, *destinations: str, role: str = "worker", wait: bool = True
    ) -> CourierProcess:
        """A worker serving ``destinations``; with ``wait``, until it polls each queue."""
        args = [arg for name in destinations for arg in ("-d", name)]
        process = await self.start(role, "worker", *args, config=config)
        if wait:
            for name in destinations:
                await self.wait_polling(process, f"courier-dest-{name}")
        return process

    async def wait_polling(
        self,
        process: CourierProcess,
        task_queue: str,
        *,
        kind: TaskQueueType.ValueType = TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        timeout: float = 60.0,
    ) -> None:
        """Wait until ``process`` polls ``task_queue`` (Temporal lists it among the pollers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process.alive:
                raise AssertionError(
                    f"{process.role} (pid {process.pid}) exited with {process.process.returncode} "
                    f"before polling {task_queue}:\n{process.tail()}"
                )
            if any(
                i.startswith(f"{process.pid}@")
                for i in await pollers(self.client, task_queue, kind)
            ):
                return
            await asyncio.sleep(0.25)
        raise AssertionError(
            f"{process.role} (pid {process.pid}) does not poll {task_queue} after "
            f"{timeout:.0f}s:\n{process.tail()}"
        )

    def tails(self, lines: int = 15) -> str:
        """The last log lines of every process, for failure messages."""
        return "\n".join(
            f"--- {p.role} (pid {p.pid}, {p.state()}) {p.log_path.name}:\n{p.tail(lines)}"
            for p in self.processes
        )

    def lines(self, role: str, text: str) -> list[str]:
        """Log lines of the processes of ``role`` that contain ``text``."""
        return [
            line
            for p in self.processes
            if p.role == role
            for line in p.log().splitlines()
            if text in line
        ]

    def explain(self) -> Callable[[], Awaitable[str]]:
        """For :func:`tests.faults.common.wait_until`: the processes' log tails."""

        async def tails() -> str:
            return self.tails()

        return tails

    async def close(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes if p.alive))


async def pollers(
    client: Client,
    task_queue: str,
    kind: TaskQueueType.ValueType = TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
) -> list[str]:
    """Identities (``pid@host``) of the workers Temporal has seen polling ``task_queue``."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=kind,
        )
    )
    return [p.identity for p in response.pollers]
