"""Throughput of Courier end to end against the bare Temporal ceiling, on the running local stack.

Run ``python -m benchmarks.throughput --help``. It needs the local stack (``courier stack
start``) and leaves it running; everything it creates has a fresh random suffix (topic, group,
task queues, workflow IDs), so it can run while others use the stack.

Two measurements in one run, on the same stack:

1. **Ceiling** — N ``BenchNoop`` workflows, each running one no-op activity on a separate task
   queue (the shape of ``ExportRecord``), started as fast as the same concurrency window allows
   (``kafka.max_in_flight``), with a default workflow worker and a default activity worker in
   this process. Measured from the first start to the last workflow's close time.
2. **Courier** — N records are produced to a fresh 3-partition topic first (not timed); then
   Courier runs in this process (ingest, the workflow worker and one ``file`` destination's
   worker, via ``run_service``). Measured from ingest start to the last workflow's close time,
   once all N workflows are completed and the file holds all N lines (checked: exactly N).

End times are the server's close times of the workflows (read from visibility afterwards), so
the polling interval does not count. CPU columns: this Python process (SDK core threads
included), the Temporal server and the Kafka broker, from ``/proc``; "machine busy" is over both
cores, so other load on the machine shows there.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from temporalio.client import Client
from temporalio.worker import Worker

from benchmarks.noop import BenchNoop, noop
from courier.config import CourierConfig, KafkaConfig, parse_config
from courier.service import run_service
from devtools.stack import StackSettings, settings_from_env
from devtools.topics import create_topic, produce
from ingest.consumer import Ingest

GOAL_RATIO = 0.9
DEFAULT_WINDOW: int = KafkaConfig.model_fields["max_in_flight"].default
POLL_S = 0.25

console = Console(width=max(Console().width, 110))


# ------------------------------------------------------------------------------------ CPU usage
_TICKS = os.sysconf("SC_CLK_TCK")


def _find_pid(marker: str) -> int | None:
    """The first process whose command line contains ``marker`` (read-only look-up)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and int(entry.name) != os.getpid():
            return int(entry.name)
    return None


def _proc_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used, or None if unknown."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / _TICKS, total / _TICKS


@dataclass
class CpuSample:
    """CPU counters at one instant."""

    wall: float
    own: float
    temporal: float | None
    kafka: float | None
    machine_busy: float
    machine_total: float


class CpuMeter:
    """Samples the CPU of this process, the Temporal server and the Kafka broker."""

    def __init__(self) -> None:
        self.temporal_pid = _find_pid("server start-dev")
        self.kafka_pid = _find_pid("kafka.Kafka")

    def sample(self) -> CpuSample:
        busy, total = _machine_cpu()
        return CpuSample(
            wall=time.monotonic(),
            own=time.process_time(),
            temporal=_proc_cpu(self.temporal_pid),
            kafka=_proc_cpu(self.kafka_pid),
            machine_busy=busy,
            machine_total=total,
        )


# ------------------------------------------------------------------------------------- results
@dataclass
class Result:
    """One measured run."""

    name: str
    records: int
    seconds: float
    all_started_s: float
    cpu_start: CpuSample
    cpu_end: CpuSample
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    def cpu(self, attr: str) -> float | None:
        start, end = getattr(self.cpu_start, attr), getattr(self.cpu_end, attr)
        return None if start is None or end is None else end - start

    @property
    def machine_busy_pct(self) -> float:
        busy = self.cpu("machine_busy") or 0.0
        total = self.cpu("machine_total") or 1.0
        return 100.0 * busy / total


# --------------------------------------------------------------------------------------- helpers
async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> float:
    """Await ``check()`` until true; return the monotonic time it first was. Fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout:.0f}s")
        await asyncio.sleep(POLL_S)


async def completed(client: Client, query: str) -> int:
    """How many workflows matching ``query`` are completed (visibility, eventually consistent)."""
    return (await client.count_workflows(f"{query} AND ExecutionStatus = 'Completed'")).count


async def last_close(client: Client, query: str) -> float:
    """The latest close time (epoch seconds) of the workflows matching ``query``."""
    latest = 0.0
    async for wf in client.list_workflows(query, page_size=1000):
        if wf.close_time is not None:
            latest = max(latest, wf.close_time.timestamp())
    return latest


def _timeout(records: int) -> float:
    return max(120.0, records / 5.0)


# --------------------------------------------------------------------------------------- ceiling
async def run_ceiling(client: Client, records: int, window: int, meter: CpuMeter) -> Result:
    """N no-op workflows with one activity each, started through a window of ``window``."""
    unique = uuid.uuid4().hex[:10]
    wf_queue, act_queue = f"bench-wf-{unique}", f"bench-act-{unique}"
    query = f"TaskQueue = '{wf_queue}'"
    workflow_worker = Worker(
        client,
        task_queue=wf_queue,
        workflows=[BenchNoop],
        disable_eager_activity_execution=True,  # as Courier's (the activity is on another queue)
    )
    activity_worker = Worker(client, task_queue=act_queue, activities=[noop])
    sem = asyncio.Semaphore(window)

    async def start(i: int) -> None:
        async with sem:
            await client.start_workflow(
                BenchNoop.run, act_queue, id=f"bench/{unique}/{i}", task_queue=wf_queue
            )

    async with workflow_worker, activity_worker:
        cpu_start = meter.sample()
        t0_wall, t0 = time.time(), time.monotonic()
        await asyncio.gather(*(start(i) for i in range(records)))
        all_started = time.monotonic() - t0
        await wait_until(
            lambda: _at_least(completed(client, query), records),
            timeout=_timeout(records),
            what=f"{records} completed ceiling workflows",
        )
        cpu_end = meter.sample()
    seconds = await last_close(client, query) - t0_wall
    return Result("Temporal ceiling", records, seconds, all_started, cpu_start, cpu_end)


async def _at_least(count: Awaitable[int], expected: int) -> bool:
    return (await count) >= expected


# --------------------------------------------------------------------------------------- courier
def bench_config(settings: StackSettings, unique: str, window: int, out: Path) -> CourierConfig:
    """A config with this run's own topic, group, task queues and one fast file destination."""
    dest = f"bench-file-{unique}"
    return parse_config(
        {
            "kafka": {
                "bootstrap_servers": settings.kafka_bootstrap,
                "topics": [f"bench-{unique}"],
                "group": f"bench-{unique}",
                "max_in_flight": window,
            },
            "temporal": {
                "address": settings.temporal_address,
                "workflow_task_queue": f"courier-workflows-bench-{unique}",
            },
            "destinations": [{"name": dest, "kind": "file", "path": str(out), "fsync": "never"}],
            "routes": {"default": dest},
        },
        environ={},
    )


def _line_count(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


async def run_courier(
    client: Client, settings: StackSettings, records: int, window: int, meter: CpuMeter
) -> Result:
    """Produce N records, then run Courier in-process until all N are exported."""
    unique = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="courier-bench-") as tmp:
        out = Path(tmp) / "out.jsonl"
        config = bench_config(settings, unique, window, out)
        topic = config.kafka.topics[0]
        query = f"CourierTopic = '{topic}'"
        await create_topic(settings.kafka_bootstrap, topic, partitions=3)
        payload = [
            (f"key-{i}".encode(), f'{{"n":{i},"pad":"{"x" * 64}"}}'.encode())
            for i in range(records)
        ]
        await produce(settings.kafka_bootstrap, topic, payload)

        stop = asyncio.Event()
        ingest = Ingest(config, client)
        cpu_start = meter.sample()
        t0_wall, t0 = time.time(), time.monotonic()
        service = asyncio.create_task(
            run_service(
                client,
                config,
                ingest=ingest,
                destinations=[d.name for d in config.destinations],
                workflows=True,
                stop=stop,
            )
        )
        try:
            all_started_at = await wait_until(
                lambda: _ready(service, ingest.counts["started"] >= records),
                timeout=_timeout(records),
                what=f"{records} workflows started by ingest",
            )
            await wait_until(
                lambda: _ready(service, _line_count(out) >= records),
                timeout=_timeout(records),
                what=f"{records} lines in {out}",
            )
            await wait_until(
                lambda: _at_least(completed(client, query), records),
                timeout=_timeout(records),
                what=f"{records} completed ExportRecord workflows",
            )
            cpu_end = meter.sample()
        finally:
            stop.set()
            await service
        seconds = await last_close(client, query) - t0_wall
        lines = _line_count(out)
        if lines != records:
            raise AssertionError(f"{out} has {lines} lines, expected exactly {records}")
        notes = [f"file has exactly {lines} lines", f"ingest counts {dict(ingest.counts)}"]
    return Result(
        "Courier end to end", records, seconds, all_started_at - t0, cpu_start, cpu_end, notes
    )


async def _ready(service: asyncio.Task[None], condition: bool) -> bool:
    if service.done():
        service.result()  # raise what stopped Courier
        raise RuntimeError("Courier stopped before the benchmark finished")
    return condition


# ----------------------------------------------------------------------------------------- report
def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def report(results: list[Result], window: int) -> None:
    """Print the figures as a table, then the ratio."""
    table = Table(title=f"Throughput ({results[0].records} records, window {window})")
    for col in (
        "run",
        "wall s",
        "rec/s",
        "all started s",
        "python CPU s",
        "temporal CPU s",
        "kafka CPU s",
        "machine busy",
    ):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in results:
        wall = r.cpu("wall") or 1.0
        own = r.cpu("own")
        table.add_row(
            r.name,
            f"{r.seconds:.2f}",
            f"{r.rate:.1f}",
            f"{r.all_started_s:.2f}",
            f"{_fmt(own)} ({_fmt(100 * own / wall if own is not None else None, '.0f')}%)",
            _fmt(r.cpu("temporal")),
            _fmt(r.cpu("kafka")),
            f"{r.machine_busy_pct:.0f}%",
        )
    console.print(table)
    console.print(
        "[dim]python CPU % is of one core over the measured wall time (up to 200% on 2 cores); "
        "machine busy is of all cores.[/dim]"
    )
    for r in results:
        for note in r.notes:
            console.print(f"[dim]{r.name}: {note}[/dim]")
    by_name = {r.name: r for r in results}
    if len(by_name) == 2:
        ratio = by_name["Courier end to end"].rate / by_name["Temporal ceiling"].rate
        colour = "green" if ratio >= GOAL_RATIO else "red"
        console.print(f"Courier / ceiling = [{colour}]{ratio:.2f}[/{colour}] (goal ≥ {GOAL_RATIO})")


async def main(args: argparse.Namespace) -> None:
    settings = settings_from_env()
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    meter = CpuMeter()
    results: list[Result] = []
    if not args.skip_ceiling:
        console.print(f"ceiling: {args.records} no-op workflows, window {args.window} …")
        results.append(await run_ceiling(client, args.records, args.window, meter))
        console.print(f"  {results[-1].rate:.1f} rec/s")
    if not args.skip_courier:
        console.print(f"courier: {args.records} records end to end, window {args.window} …")
        results.append(await run_courier(client, settings, args.records, args.window, meter))
        console.print(f"  {results[-1].rate:.1f} rec/s")
    report(results, args.window)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="Courier end-to-end throughput vs the bare Temporal ceiling on the local "
        "stack (which must be running; it is left running).",
    )
    parser.add_argument(
        "--records", "-n", type=int, default=2000, help="records per run (default 2000)"
    )
    parser.add_argument(
        "--window",
        "-w",
        type=int,
        default=DEFAULT_WINDOW,
        help="workflow starts in flight at once, for both runs "
        f"(kafka.max_in_flight; default {DEFAULT_WINDOW})",
    )
    parser.add_argument("--skip-ceiling", action="store_true", help="only measure Courier")
    parser.add_argument("--skip-courier", action="store_true", help="only measure the ceiling")
    args = parser.parse_args(argv)
    if args.records < 1 or args.window < 1:
        parser.error("--records and --window must be at least 1")
    if args.skip_ceiling and args.skip_courier:
        parser.error("nothing to do with both --skip-ceiling and --skip-courier")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    asyncio.run(main(parse_args()))
