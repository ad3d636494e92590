"""What the benchmarks that run Courier as real processes share (isolation, fan-out).

Courier runs as in production: ``courier ingest``, ``courier worker --workflows`` and one
``courier worker -d NAME`` per destination (or one ``courier run`` holding all of them), each
with its metrics port, started and ready (``/readyz``) before the records are produced. The
destinations are REST endpoints of a recording receiver in the benchmark's process
(``courier_devtools.receiver``), whose arrival times are the effects measured. Every trial has
its own topics, consumer group, workflow task queue and destination names (a uuid suffix) and
cleans up after itself: its processes stopped by PID, its workflows still running terminated,
its topics deleted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from aiokafka import AIOKafkaProducer
from temporalio.client import Client

from benchmarks.common import CpuMeter, cpu_model, free_port
from benchmarks.kafka_io import create_topic, delete_topic
from courier.config.model import CourierConfig, parse_config
from courier_devtools.receiver import Receiver
from courier_devtools.stack.settings import StackSettings

COURIER = str(Path(sys.executable).with_name("courier"))
Mode = Literal["per_record", "batch"]
PARTITIONS = 3
BATCH_MAX_RECORDS = 500
"""``ingest.max_records`` in batch mode: records per ExportRange workflow at most."""
BATCH_MAX_WAIT = "200ms"
"""``ingest.max_wait`` in batch mode: how long a range waits to fill."""
BATCH_SIZE = 500
"""A destination's ``batch_size`` in batch mode: records per export activity at most."""
STOP_TIMEOUT_S = 20.0
QUIET_POLL_S = 60.0
SETTLE_S = 3.0
"""Pause between trials, so one trial's tail does not run into the next one's start."""


# -------------------------------------------------------------------------------------- figures
def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``min / **median** / max``."""
    if not values:
        return "n/a"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{fmt.format(low)} / **{fmt.format(mid)}** / {fmt.format(high)}"


def max_in_window(times: Sequence[float], width: float = 1.0, since: float | None = None) -> int:
    """Most timestamps in any half-open window ``[t, t + width)`` starting at one (≥ ``since``)."""
    ordered = sorted(times)
    best = 0
    for i, start in enumerate(ordered):
        if since is not None and start < since:
            continue
        best = max(best, bisect.bisect_left(ordered, start + width) - i)
    return best


def met(ok: bool) -> str:
    """``yes`` or a bold ``no`` for a table's *met* column."""
    return "yes" if ok else "**no**"


def machine_line() -> str:
    """The sentence naming the machine and the stack a report was measured on."""
    return (
        f"Machine: {len(os.sched_getaffinity(0))} CPUs (`nproc`), {cpu_model()}; the local stack "
        "(Kafka, Temporal dev server on SQLite, PostgreSQL) shared with other users."
    )


# ------------------------------------------------------------------------------------ processes
def metrics_port() -> int:
    """A free port for a Courier process's metrics (the SDK's are served on the same one)."""
    return free_port()


def start_courier(args: list[str], config: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
    """Start ``courier ARGS -c CONFIG --metrics-port PORT`` in its own session, logging to
    ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [COURIER, *args, "-c", str(config), "--metrics-port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "NO_COLOR": "1"},
        )


def stop_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process this benchmark started, then SIGKILL its group if it lingers."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def check_alive(procs: Sequence[subprocess.Popen[bytes]], log: Path) -> None:
    """Raise if one of ``procs`` has exited (its output is in ``log``)."""
    for proc in procs:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}; see {log}")


def others_running(own: str) -> list[str]:
    """Other pytest or courier processes on the machine: not this process, nor those whose
    command line holds ``own`` (the benchmark's work directory, in its config paths)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if own in args:
                continue
            words = args.split()[:4]
            if any(w.endswith(("pytest", "/courier", "courier.cli")) for w in words):
                found.append(f"{entry.name} {args.strip()[:120]}")
    return found


async def wait_quiet(limit_s: float, own: str) -> list[str]:
    """Wait (polling every minute, up to ``limit_s``) until no other pytest runs; what is seen."""
    deadline = time.monotonic() + limit_s
    while True:
        busy = [p for p in others_running(own) if "pytest" in p]
        if not busy or time.monotonic() > deadline:
            return busy
        print(f"waiting: {len(busy)} pytest processes running: {busy[0]}", flush=True)
        await asyncio.sleep(QUIET_POLL_S)


# ------------------------------------------------------------------------------------- Temporal
async def terminate_running(client: Client, task_queue: str) -> int:
    """Terminate a trial's workflows still running on ``task_queue``; return how many."""
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
    done = 0
    gate = asyncio.Semaphore(32)

    async def one(workflow_id: str, run_id: str | None) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await client.get_workflow_handle(workflow_id, run_id=run_id).terminate(
                    reason="benchmark trial over"
                )

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ids = [(wf.id, wf.run_id) async for wf in client.list_workflows(query)]
        if not ids:
            if (await client.count_workflows(query)).count == 0:
                break
            await asyncio.sleep(0.5)
            continue
        await asyncio.gather(*(one(i, r) for i, r in ids))
        done += len(ids)
        await asyncio.sleep(0.5)
    return done


# ------------------------------------------------------------------------------------- configs
def destination(name: str, url: str, mode: Mode, **extra: Any) -> dict[str, Any]:
    """A REST destination's config (``max_concurrency`` 16; ``batch_size`` in batch mode)."""
    dest: dict[str, Any] = {"name": name, "kind": "rest", "url": url, "max_concurrency": 16}
    if mode == "batch":
        dest["batch_size"] = BATCH_SIZE
    return dest | extra


async def produce(bootstrap: str, topic: str, keys: Iterable[str]) -> None:
    """Produce one small JSON record per key (acks=all), in order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        pending = []
        for n, key in enumerate(keys):
            value = f'{{"n":{n},"pad":"{"x" * 64}"}}'.encode()
            pending.append(await producer.send(topic, key=key.encode(), value=value))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def interleave(streams: Sequence[Sequence[str]]) -> list[str]:
    """Round-robin over ``streams``: the first of each, then the second of each, …"""
    longest = max((len(s) for s in streams), default=0)
    return [s[i] for i in range(longest) for s in streams if i < len(s)]


class Run:
    """One trial's names, config file, processes and clean-up."""

    def __init__(self, client: Client, settings: StackSettings, workdir: Path, prefix: str) -> None:
        self.client = client
        self.settings = settings
        self.prefix = prefix
        self.unique = uuid.uuid4().hex[:8]
        self.workdir = workdir
        self.config_path = workdir / f"{self.unique}.yaml"
        self.log = workdir / f"{self.unique}.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []  # each process's metrics (and health) port
        self.cpu = CpuMeter(settings)  # the processes it starts, the stack, this process
        self.topics: list[str] = []
        self.config: dict[str, Any] = {}
        self.parsed: CourierConfig | None = None

    def topic(self, role: str) -> str:
        """The trial's topic for ``role``."""
        return f"{self.prefix}-{role}-{self.unique}"

    def base_config(
        self, mode: Mode, topics: list[str], *, fairness: bool = True
    ) -> dict[str, Any]:
        """Kafka, Temporal and ingest sections of the trial's config, with its own consumer
        group and workflow task queue."""
        ingest: dict[str, Any] = {"mode": mode, "fairness": fairness}
        if mode == "batch":
            ingest |= {"max_records": BATCH_MAX_RECORDS, "max_wait": BATCH_MAX_WAIT}
        return {
            "kafka": {
                "bootstrap_servers": self.settings.kafka_bootstrap,
                "topics": topics,
                "group": f"{self.prefix}-{self.unique}",
            },
            "temporal": {
                "address": self.settings.temporal_address,
                "namespace": self.settings.temporal_namespace,
                "workflow_task_queue": f"{self.prefix}-workflows-{self.unique}",
            },
            "ingest": ingest,
        }

    async def create_topics(self, *topics: str) -> None:
        """Create ``topics`` (deleted again by :meth:`cleanup`)."""
        for topic in topics:
            await create_topic(self.settings.kafka_bootstrap, topic, PARTITIONS)
            self.topics.append(topic)

    def write_config(self, config: dict[str, Any]) -> None:
        """Check ``config`` and write it where the processes read it."""
        self.parsed = parse_config(config, environ={})  # fail here, not in four processes
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))

    def launch(self, *, destinations: bool = True) -> None:
        """Start ingest, the workflow worker and (unless told not to) one worker per
        destination."""
        self._add("ingest", ["ingest"])
        self._add("workflow worker", ["worker", "--workflows"])
        if destinations:
            self.launch_destinations()

    def launch_destinations(self) -> None:
        """Start one worker process per destination."""
        for dest in self.config["destinations"]:
            role = dest["name"].split("-", 1)[0] + "'s worker"  # healthy-…: "healthy's worker"
            self._add(role, ["worker", "-d", dest["name"]])

    def launch_one(self) -> None:
        """Start one ``courier run`` process: ingest and every worker together."""
        self._add("courier run", ["run"])

    def _add(self, role: str, args: list[str]) -> None:
        port = metrics_port()
        proc = start_courier(args, self.config_path, self.log, port)
        self.procs.append(proc)
        self.ports.append(port)
        self.cpu.add(role, proc.pid)

    async def ready(self, timeout: float = 120.0) -> None:
        """Wait until every process started answers 200 on ``/readyz``."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as http:
            for port in self.ports:
                while True:
                    self.alive()
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"not ready after {timeout:.0f}s; see {self.log}")
                    await asyncio.sleep(0.2)

    def alive(self) -> None:
        """Raise if one of the trial's processes has exited."""
        check_alive(self.procs, self.log)

    async def cleanup(self) -> int:
        """Stop the processes, terminate the backlogs, delete the topics; terminated count."""
        await asyncio.to_thread(stop_all, self.procs)
        terminated = 0
        if self.config:
            queue = self.config["temporal"]["workflow_task_queue"]
            terminated = await terminate_running(self.client, queue)
            await terminate_running(self.client, f"{queue}-control")  # DestinationState
        for topic in self.topics:
            await delete_topic(self.settings.kafka_bootstrap, topic)
        return terminated


async def wait_effects(
    receiver: Receiver, wanted: Mapping[str, int], run: Run, timeout: float
) -> dict[str, list[float]]:
    """Wait for ``wanted[prefix]`` effects under each path prefix; their arrival times, sorted.

    The requests are scanned once each, as they come: the receiver runs in this process, and
    rescanning all of them at every poll would take its CPU."""
    deadline = time.monotonic() + timeout
    times: dict[str, list[float]] = {prefix: [] for prefix in wanted}
    scanned = 0
    while True:
        run.alive()
        requests = receiver.requests
        for r in requests[scanned:]:
            if r.had_effect:
                for prefix, found in times.items():
                    if r.path.startswith(prefix):
                        found.append(r.time)
        scanned = len(requests)
        missing = {p: n for p, n in wanted.items() if len(times[p]) < n}
        if not missing:
            return {p: sorted(t) for p, t in times.items()}
        if time.monotonic() > deadline:
            short = ", ".join(f"{len(times[p])} of {n} under {p}" for p, n in missing.items())
            raise RuntimeError(f"{short} after {timeout:.0f}s; see {run.log}")
        await asyncio.sleep(0.05)


# ----------------------------------------------------------------------------------------- docs
def write_section(
    path: Path, section: str, start: str, end: str, *, after: str | None = None
) -> None:
    """Replace the text between the ``start`` and ``end`` markers of ``path``; if they are
    absent, insert the marked section after the line ``after`` (or append it)."""
    text = path.read_text()
    block = f"{start}\n{section}{end}\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    elif after is not None and f"{after}\n" in text:
        head, tail = text.split(f"{after}\n", 1)
        text = f"{head}{after}\n\n{block}\n{tail.lstrip(chr(10))}"
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
