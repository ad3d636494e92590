"""``courier`` processes pointed at the wrong ports: what they say, how fast, and SIGTERM.

Each test starts the real command (``.venv/bin/courier``) with a config whose Temporal or Kafka
address is a free port (nothing listens: "refused"), PostgreSQL's port (a server, but not the
right one) or a listener that never answers, and reads its stderr (a pipe: plain lines, no ANSI).
Bounds are generous: a message within 10 s of the start, an exit within 5 s of SIGTERM (the
target is 2 s; the measured times are in the assertion messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from courier_devtools.stack import StackSettings

pytestmark = pytest.mark.integration

COURIER = str(Path(sys.executable).with_name("courier"))
MESSAGE_WITHIN_S = 10.0
EXIT_WITHIN_S = 5.0
ANSI = "\x1b["


class Courier:
    """A ``courier`` subprocess; its stderr lines kept with the seconds since it started."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append((time.monotonic() - self.started, raw.decode().rstrip("\n")))

    async def line_with(self, text: str, timeout: float = MESSAGE_WITHIN_S) -> tuple[float, str]:
        """The first line containing ``text``, with when it came; fails after ``timeout``."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            for at, line in self.lines:
                if text in line:
                    return at, line
            if self.process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"no line with {text!r} within {timeout}s: {self.text()}")

    async def terminate(self) -> float:
        """SIGTERM; the seconds until the process exited (it must exit 0)."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 30)
        took = time.monotonic() - sent
        await self._reader
        assert code == 0, f"exit code {code}: {self.text()}"
        return took

    async def exited(self) -> int:
        code = await asyncio.wait_for(self.process.wait(), 30)
        await self._reader
        return code

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


@contextlib.asynccontextmanager
async def courier(*args: str) -> AsyncIterator[Courier]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURIER_")}
    process = await asyncio.create_subprocess_exec(
        COURIER,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    running = Courier(process)
    try:
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def write_config(
    tmp_path: Path, stack: StackSettings, *, kafka: str | None = None, temporal: str | None = None
) -> str:
    unique = uuid.uuid4().hex[:8]
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": kafka or stack.kafka_bootstrap,
            "topics": [f"t-{unique}"],
            "group": f"g-{unique}",
        },
        "temporal": {
            "address": temporal or stack.temporal_address,
            "workflow_task_queue": f"courier-workflows-{unique}",
        },
        "destinations": [
            {"name": f"file-{unique}", "kind": "file", "path": str(tmp_path / "out.jsonl")}
        ],
        "routes": {"default": f"file-{unique}"},
    }
    path = tmp_path / "courier.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A listener that accepts connections and never says anything."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def assert_plain(run: Courier) -> None:
    assert ANSI not in run.text(), run.text()


# ----------------------------------------------------------------------------------- Temporal
@pytest.mark.parametrize("port", ["postgres_port", "kafka_port"])
async def test_temporal_address_on_another_server(
    stack: StackSettings, tmp_path: Path, port: str
) -> None:
    address = f"{stack.host}:{getattr(stack, port)}"
    config = write_config(tmp_path, stack, temporal=address)
    async with courier("worker", "--workflows", "-c", config) as run:
        at, line = await run.line_with(f"the server at {address} is not a Temporal server")
        assert "{" not in line and "retrying in 1s" in line
        took = await run.terminate()
    assert took < EXIT_WITHIN_S, f"exit took {took:.2f}s after SIGTERM"
    assert_plain(run)
    print(f"temporal at {port}: message after {at:.2f}s, exit {took:.2f}s after SIGTERM")


async def test_temporal_refused_and_sigterm_while_connecting(
    stack: StackSettings, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = write_config(tmp_path, stack, temporal=address)
    async with courier("worker", "--workflows", "-c", config) as run:
        at, line = await run.line_with(f"cannot reach Temporal at {address}: connection refused")
        await asyncio.sleep(1.5)
        took = await run.terminate()
    assert line.endswith(
        f"WARNING courier: cannot reach Temporal at {address}: connection refused; check "
        "temporal.address and that the Temporal server is running; retrying in 1s"
    )
    assert "stopped before connecting to Temporal" in run.text()
    assert took < EXIT_WITHIN_S, f"exit took {took:.2f}s after SIGTERM"
    print(f"temporal refused: message after {at:.2f}s, exit {took:.2f}s after SIGTERM")


async def test_short_command_says_it_in_one_line(stack: StackSettings, tmp_path: Path) -> None:
    address = f"{stack.host}:{stack.postgres_port}"
    config = write_config(tmp_path, stack, temporal=address)
    async with courier("status", "-c", config) as run:
        code = await run.exited()
    assert code == 1
    assert len(run.lines) == 1, run.text()
    assert run.lines[0][1].startswith(
        f"error: the server at {address} is not a Temporal server ("
    ), run.text()
    assert run.lines[0][1].endswith(
        "); check temporal.address (or temporal.tls if the server expects TLS)"
    )


# -------------------------------------------------------------------------------------- Kafka
async def test_kafka_address_on_another_server(stack: StackSettings, tmp_path: Path) -> None:
    address = f"{stack.host}:{stack.postgres_port}"
    config = write_config(tmp_path, stack, kafka=address)
    async with courier("ingest", "-c", config) as run:
        at, line = await run.line_with(f"the server at {address} is not a Kafka server")
        took = await run.terminate()
    assert line.endswith(
        f"WARNING courier.ingest: the server at {address} is not a Kafka server (it answered a "
        "Kafka request with something else); check kafka.bootstrap_servers; retrying in 1s"
    )
    assert "aiokafka" not in run.text()
    assert took < EXIT_WITHIN_S, f"exit took {took:.2f}s after SIGTERM"
    assert_plain(run)
    print(f"kafka at postgres: message after {at:.2f}s, exit {took:.2f}s after SIGTERM")


async def test_kafka_silent_server_and_sigterm_while_connecting(
    stack: StackSettings, tmp_path: Path
) -> None:
    async with silent_server() as address:
        config = write_config(tmp_path, stack, kafka=address)
        async with courier("ingest", "-c", config) as run:
            at, line = await run.line_with(f"the server at {address} is not a Kafka server")
            await asyncio.sleep(2)  # the next attempt is waiting for an answer now
            took = await run.terminate()
    assert "(no answer to a Kafka request within 5s)" in line
    assert took < EXIT_WITHIN_S, f"exit took {took:.2f}s after SIGTERM"
    print(f"kafka silent: message after {at:.2f}s, exit {took:.2f}s after SIGTERM")


async def test_kafka_refused(stack: StackSettings, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = write_config(tmp_path, stack, kafka=address)
    async with courier("ingest", "-c", config) as run:
        at, _ = await run.line_with(f"cannot reach Kafka at {address}: connection refused")
        took = await run.terminate()
    assert took < EXIT_WITHIN_S, f"exit took {took:.2f}s after SIGTERM"
    print(f"kafka refused: message after {at:.2f}s, exit {took:.2f}s after SIGTERM")


# ------------------------------------------------------------------------------------ running
async def test_sigterm_while_running(stack: StackSettings, tmp_path: Path) -> None:
    config = write_config(tmp_path, stack)
    async with courier("run", "--log-format", "json", "-c", config) as run:
        await run.line_with("ingest started", timeout=30)
        await asyncio.sleep(1)
        took = await run.terminate()
    lines = [json.loads(line) for _, line in run.lines]
    assert {"timestamp", "level", "logger", "message"} <= set(lines[0])
    assert any(line["message"].startswith("ingest stopped") for line in lines)
    assert took < EXIT_WITHIN_S, f"exit took {took:.2f}s after SIGTERM"
    print(f"running: exit {took:.2f}s after SIGTERM")


@contextlib.asynccontextmanager
async def switchable_proxy(target: tuple[str, int]) -> AsyncIterator[tuple[str, Any]]:
    """A TCP proxy to ``target``; ``down()`` drops every connection and refuses new ones."""
    connections: set[asyncio.StreamWriter] = set()
    port = free_port()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        connections.update((writer, up_writer))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    class Switch:
        server: asyncio.Server | None = None

        async def up(self) -> None:
            self.server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True)

        def down(self) -> None:
            if self.server is not None:
                self.server.close()
                self.server = None
            for writer in connections:
                writer.transport.abort()
            connections.clear()

    switch = Switch()
    await switch.up()
    try:
        yield f"127.0.0.1:{port}", switch
    finally:
        switch.down()


async def test_a_temporal_outage_is_summarised(stack: StackSettings, tmp_path: Path) -> None:
    async with switchable_proxy((stack.host, stack.temporal_port)) as (address, switch):
        config = write_config(tmp_path, stack, temporal=address)
        async with courier("worker", "--workflows", "--log-format", "json", "-c", config) as run:
            await run.line_with("workflow worker on queue", timeout=30)
            switch.down()
            await asyncio.sleep(12)
            await switch.up()
            await asyncio.sleep(3)
            await run.terminate()
    lines = [json.loads(line) for _, line in run.lines]
    warnings = [line for line in lines if line["level"] != "INFO"]
    summaries = [line for line in warnings if "repeated" in line]
    assert summaries, run.text()
    held_back = sum(line["repeated"] for line in summaries)
    assert len(warnings) <= 25, run.text()
    assert all(ANSI not in line["message"] and "{" not in line["message"] for line in lines)
    print(f"temporal outage of 12s: {len(warnings)} warning lines, {held_back} held back")
