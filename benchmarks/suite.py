"""The benchmark suite: Courier against Kafka Connect, a naive consumer and bare Temporal.

Run ``python -m benchmarks --help`` (``make bench``). It needs the local stack (``courier stack
start``: Kafka, Temporal, PostgreSQL) and leaves it running. It first restarts the stack's
Temporal on an empty database (``--keep-temporal`` keeps it), so every run starts from the same
server state: run it where nothing else uses that stack's Temporal, or pass ``--keep-temporal``.
Everything else it creates has a fresh random suffix (topics, consumer groups, task queues,
tables), so Kafka and PostgreSQL can be shared. Topics and tables are deleted after each run;
workflows stay in Temporal's history.

The batch pipelines ``courier-batch-file-<N>`` differ only in ``ingest.max_records`` (N records
per range at most), to show what the range size buys; the default selection runs them beside
Kafka Connect, the naive consumer, batch → PostgreSQL and the per-record pair.

Each pipeline run gets a fresh 3-partition topic filled with N records before the clock starts.
The clock runs from consumer start to the last record's effect being visible (lines in a file,
rows in a table, workflows closed). Pipelines run interleaved — A, B, C, … then again — for
``--rounds`` rounds, and each is reported as min / median / max: two identical runs on a
2-core machine can differ by half, so one run proves little.

Then, unless ``--backlog-records 0``, the peak memory of Courier draining a backlog is measured
(``benchmarks.ingest_memory``). Output: tables on the console, ``docs/benchmarks.md`` and
``docs/benchmarks.png`` (``--no-docs`` skips the files).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from rich.console import Console
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

from benchmarks import ceiling, connect, ingest_memory, naive
from benchmarks.common import (
    CpuUsage,
    Measurement,
    PipelineError,
    background_cpu,
    cpu_model,
    fresh_temporal,
    stack_pids,
    temporal_db_mb,
)
from benchmarks.kafka_io import delete_topic, fill_topic
from benchmarks.report import (
    PipelineResults,
    Report,
    TemporalDb,
    chart,
    kept_sections,
    markdown,
    print_console,
)
from courier_devtools.stack.settings import REPO_ROOT, StackSettings, settings_from_env

console = Console(width=max(Console().width, 170))

DEFAULT_WINDOW = 256
"""Workflow starts in flight for the per-record pair (Courier's ``kafka.max_in_flight`` default)."""
RUN_TIMEOUT_FLOOR_S = 900.0
IDLE_SAMPLE_S = 5.0
"""Before each round, how long the CPU of the machine and servers is sampled doing nothing."""
RANGE_SIZES = (500, 2000, 5000, 10_000)
OLD_BATCH_SIZE = 500
"""The file and PostgreSQL kinds' ``batch_size`` before their default became 5,000."""
"""``ingest.max_records`` of the ``courier-batch-file-<N>`` pipelines."""


@dataclass
class Context:
    """What every pipeline run needs."""

    settings: StackSettings
    args: argparse.Namespace
    client: Client | None = None
    connect_lib: Path | None = None
    courier: ModuleType | None = None
    """``benchmarks.courier_runs``, imported on first use (it needs the product code)."""


@dataclass(frozen=True)
class Pipeline:
    name: str
    description: str
    per_record: bool
    needs: tuple[str, ...]
    """Stack services it uses (checked before the rounds)."""
    run: Callable[[Context, Path, str, str, int], Awaitable[Measurement]]
    """(context, temporary directory, topic, unique suffix, records) → one measurement."""
    uses_topic: bool = True


# ------------------------------------------------------------------------------------ pipelines
def _client(ctx: Context) -> Client:
    if ctx.client is None:
        raise PipelineError("no Temporal client (connection failed earlier)")
    return ctx.client


def _courier(ctx: Context) -> ModuleType:
    if ctx.courier is None:
        raise PipelineError("benchmarks.courier_runs could not be imported")
    return ctx.courier


async def _connect(ctx: Context, tmp: Path, topic: str, unique: str, n: int) -> Measurement:
    if ctx.connect_lib is None:
        raise PipelineError("the Kafka Connect jars are not available")
    return await connect.run(ctx.settings, ctx.connect_lib, tmp, topic, unique, n)


async def _naive(ctx: Context, tmp: Path, topic: str, unique: str, n: int) -> Measurement:
    return await naive.run(ctx.settings, tmp, topic, unique, n)


def _batch(
    pipeline: str,
    kind: str,
    fsync: str,
    max_records: int | None = None,
    batch_size: int | None = None,
) -> Callable[[Context, Path, str, str, int], Awaitable[Measurement]]:
    """A Courier batch pipeline; ``max_records`` / ``batch_size`` None: Courier's defaults."""

    async def run(ctx: Context, tmp: Path, topic: str, unique: str, n: int) -> Measurement:
        result: Measurement = await _courier(ctx).run_batch(
            ctx.settings,
            _client(ctx),
            tmp,
            topic,
            unique,
            n,
            pipeline=pipeline,
            kind=kind,
            fsync=fsync,
            max_records=max_records,
            batch_size=batch_size,
        )
        return result

    return run


async def _per_record(ctx: Context, tmp: Path, topic: str, unique: str, n: int) -> Measurement:
    result: Measurement = await _courier(ctx).run_per_record(
        ctx.settings, _client(ctx), tmp, topic, unique, n, window=ctx.args.window
    )
    return result


async def _ceiling(ctx: Context, tmp: Path, topic: str, unique: str, n: int) -> Measurement:
    return await ceiling.run(ctx.settings, _client(ctx), n, ctx.args.window, history_sample=20)


PIPELINES: tuple[Pipeline, ...] = (
    Pipeline(
        "kafka-connect-file",
        "Apache Kafka Connect 4.3.1 standalone, FileStreamSink (one task), StringConverter; "
        "a JVM started per run",
        False,
        ("kafka",),
        _connect,
    ),
    Pipeline(
        "naive-aiokafka-file",
        "aiokafka consumer loop appending each value to a file, auto-commit (at-most-once), "
        "in this process: the floor",
        False,
        ("kafka",),
        _naive,
    ),
    Pipeline(
        "courier-batch-file",
        "Courier, `ingest.mode: batch` at Courier's default `max_records` (5,000; max_wait "
        "200ms), one `file` destination (default `batch_size`, 5,000, and `fsync: always`), "
        "in this process: what a user gets",
        False,
        ("kafka", "temporal"),
        _batch("courier-batch-file", "file", "always"),
    ),
    *(
        Pipeline(
            f"courier-batch-file-{size}",
            f"as `courier-batch-file` with `max_records: {size}` and `fsync: never` — "
            "comparable to Connect and the naive loop, which do not fsync either",
            False,
            ("kafka", "temporal"),
            _batch(f"courier-batch-file-{size}", "file", "never", size),
        )
        for size in RANGE_SIZES
    ),
    Pipeline(
        f"courier-batch-file-5000-bs{OLD_BATCH_SIZE}",
        f"as `courier-batch-file-5000` with `batch_size: {OLD_BATCH_SIZE}` (the file kind's "
        "default before it became 5,000): ten export activities a range instead of one",
        False,
        ("kafka", "temporal"),
        _batch(
            f"courier-batch-file-5000-bs{OLD_BATCH_SIZE}", "file", "never", 5000, OLD_BATCH_SIZE
        ),
    ),
    Pipeline(
        "courier-batch-postgres",
        "Courier, `ingest.mode: batch` at Courier's default `max_records` (5,000), one "
        "`postgres` destination (default `batch_size`, 5,000; `INSERT … ON CONFLICT DO "
        "NOTHING`), in this process",
        False,
        ("kafka", "temporal", "postgres"),
        _batch("courier-batch-postgres", "postgres", "always"),
    ),
    Pipeline(
        "courier-per-record-file",
        "Courier, `ingest.mode: per_record` (one ExportRecord workflow per record), one `file` "
        "destination with `fsync: never`; timed to the last workflow's close",
        True,
        ("kafka", "temporal"),
        _per_record,
    ),
    Pipeline(
        "temporal-ceiling",
        "bare Temporal: one no-op workflow + one no-op activity per record, started through the "
        "same window; no Kafka; timed from the first start to the last close",
        True,
        ("temporal",),
        _ceiling,
        uses_topic=False,
    ),
)
BY_NAME = {p.name: p for p in PIPELINES}
ALIASES = {"courier-batch-file-fsync-never": "courier-batch-file-5000"}
"""Names ``--pipelines`` still accepts for a pipeline renamed since."""
DEFAULT_PIPELINES = tuple(p.name for p in PIPELINES if p.name != "courier-batch-file")
"""``make bench``: the range sizes beside Connect, the naive loop, PostgreSQL and the
per-record pair (``courier-batch-file``, with ``fsync: always``, only when asked for)."""


# ---------------------------------------------------------------------------------- environment
def _command_version(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0] if text else None


def _memory_total() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


async def environment(ctx: Context) -> dict[str, str]:
    settings = ctx.settings
    env: dict[str, str] = {
        "date (UTC)": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "CPUs (nproc)": _command_version(["nproc"]) or "unknown",
        "CPU model": cpu_model(),
        "memory": _memory_total(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
    }
    kafka_jars = sorted((settings.stack_dir / "kafka" / "lib").glob("kafka_2.13-*.jar"))
    env["Kafka broker"] = (
        kafka_jars[0].name.removeprefix("kafka_2.13-").removesuffix(".jar")
        if kafka_jars
        else "unknown"
    ) + " (KRaft, one node, from .stack/kafka/lib)"
    env["Kafka Connect"] = connect.connect_version(settings) or "not fetched"
    env["Java"] = _command_version([connect.java(), "-version"]) or "unknown"
    if ctx.client is not None:
        info = await ctx.client.workflow_service.get_system_info(GetSystemInfoRequest())
        env["Temporal server"] = f"{info.server_version} (temporal server start-dev, SQLite)"
    temporal_cli = Path(sys.executable).parent / "temporal"
    cli = shutil.which("temporal") if not temporal_cli.exists() else str(temporal_cli)
    if cli:
        env["Temporal CLI"] = _command_version([cli, "--version"]) or "unknown"
    for package in ("temporalio", "aiokafka", "asyncpg"):
        env[package] = importlib.metadata.version(package)
    try:
        import asyncpg

        conn = await asyncpg.connect(settings.postgres_dsn, timeout=10)
        try:
            env["PostgreSQL"] = str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
    except Exception as exc:
        env["PostgreSQL"] = f"unavailable ({exc})"
    return env


def method(args: argparse.Namespace, chosen: list[Pipeline]) -> list[str]:
    order = " → ".join(f"`{p.name}`" for p in chosen)
    return [
        f"{args.rounds} round{'s' if args.rounds != 1 else ''}; in each round every pipeline "
        f"runs once, in this order: {order}. "
        "Interleaving spreads slow phases of the shared machine over all pipelines; each "
        "pipeline is reported as min / median / max over the rounds.",
        f"Each run gets a fresh 3-partition topic holding N records ({args.records:,} for the "
        f"fast pipelines, {args.per_record_records:,} for the two per-record ones), produced "
        "with acks=all **before** the clock starts (not timed), and its own consumer group, "
        "task queues, output file or table.",
        "Timed from consumer start (the `java` launch for Connect; the consumer/`run_service` "
        "start for in-process pipelines; the first workflow start for the ceiling) to the last "
        "record's effect being visible: for files, the file's mtime once it holds N lines "
        "(polled every 5 ms); for PostgreSQL, a 20 ms `SELECT count(*)` poll reaching N; for "
        "the per-record pair, the last workflow's close time from visibility.",
        "Range size: `courier-batch-file-<N>` hand off ranges of at most N records "
        "(`ingest.max_records: N`; a range also closes at 16 MiB or after 200 ms), all else "
        "equal: the destination's `batch_size` is the file kind's default, 5,000 (one export "
        "activity per range up to 5,000 records, two for 10,000) and `fsync: never`, so they "
        "are the like-for-like peers of Connect and the naive loop, neither of which fsyncs. "
        "`courier-batch-file-5000-bs500` is `courier-batch-file-5000` at `batch_size: 500`, "
        "the default before (ten activities per range). `courier-batch-file` is what a user gets "
        "(Courier's default `max_records`, 5,000, and `fsync: always`, each batch synced before "
        "it counts as exported); `courier-batch-postgres` runs at the default "
        "`max_records`. The per-record pair uses `fsync: never`, as the ceiling writes nothing.",
        "Courier and the naive consumer run inside the suite's Python process; Connect is its "
        "own JVM (its pid in a pid file of the run's temporary directory; always terminated). "
        "A Courier pipeline's in-process CPU is Courier's ingest and workers **and** the "
        "harness that shares the process (its 5 ms file polls or 20 ms row counts); nothing "
        "is subtracted.",
        "Every run checks its effect: exactly N lines / rows (Connect and the naive loop: a "
        "mismatch is noted).",
        "The stack is shared: other work on the machine shows as *machine busy* and makes "
        "rounds differ; a server restart during a run shows in the notes.",
    ]


# --------------------------------------------------------------------------------------- rounds
async def run_one(ctx: Context, pipeline: Pipeline, records: int) -> Measurement:
    unique = uuid.uuid4().hex[:10]
    topic = f"bench-{pipeline.name}-{unique}"
    bootstrap = ctx.settings.kafka_bootstrap
    with tempfile.TemporaryDirectory(prefix=f"courier-bench-{pipeline.name}-") as tmp_name:
        try:
            if pipeline.uses_topic:
                produced_s = await fill_topic(bootstrap, topic, records)
                console.print(f"  [dim]{records:,} records produced in {produced_s:.1f}s[/dim]")
            timeout = max(RUN_TIMEOUT_FLOOR_S, records / 2.0)
            return await asyncio.wait_for(
                pipeline.run(ctx, Path(tmp_name), topic, unique, records), timeout
            )
        finally:
            if pipeline.uses_topic:
                await delete_topic(bootstrap, topic)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PipelineError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"timed out: {exc}" if str(exc) else "timed out"
    lines = traceback.format_exception(exc)
    return f"{type(exc).__name__}: {exc}\n" + "".join(lines[-6:])


async def prepare(
    ctx: Context, chosen: list[Pipeline], results: dict[str, PipelineResults]
) -> None:
    """Check the stack, fetch Connect, connect to Temporal, import Courier; fail what cannot run."""

    def fail(names: list[str], why: str) -> None:
        for name in names:
            if results[name].error is None:
                results[name].error = why
                console.print(f"[red]{name}: skipped — {_first(why)}[/red]")

    pids = stack_pids(ctx.settings)
    for service, pid in pids.items():
        if pid is None:
            fail(
                [p.name for p in chosen if service in p.needs],
                f"the stack's {service} is not running (courier stack start {service})",
            )
    if "kafka-connect-file" in results and results["kafka-connect-file"].error is None:
        try:
            ctx.connect_lib = await asyncio.to_thread(
                connect.prepare, ctx.settings, lambda m: console.print(m)
            )
        except Exception as exc:
            fail(["kafka-connect-file"], _describe(exc))
    temporal_users = [p.name for p in chosen if "temporal" in p.needs]
    if temporal_users:
        try:
            ctx.client = await asyncio.wait_for(
                Client.connect(
                    ctx.settings.temporal_address, namespace=ctx.settings.temporal_namespace
                ),
                30,
            )
        except Exception as exc:
            fail(temporal_users, f"cannot connect to Temporal: {_describe(exc)}")
    courier_users = [p.name for p in chosen if p.name.startswith("courier-")]
    if courier_users:
        try:
            import benchmarks.courier_runs as courier_runs

            ctx.courier = courier_runs
        except Exception as exc:  # the product code may be mid-change
            fail(courier_users, f"importing Courier failed: {_describe(exc)}")


def _first(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


async def run_rounds(
    ctx: Context,
    chosen: list[Pipeline],
    results: dict[str, PipelineResults],
    background: list[CpuUsage],
) -> None:
    args = ctx.args
    for round_no in range(1, args.rounds + 1):
        idle = await background_cpu(ctx.settings, IDLE_SAMPLE_S)
        background.append(idle)
        console.print(
            f"[bold]round {round_no}/{args.rounds}[/bold] · idle for {IDLE_SAMPLE_S:.0f}s: "
            f"machine {idle.machine_busy_pct:.0f}% busy, temporal "
            f"{idle.seconds.get('temporal') or 0:.2f} CPU s, kafka "
            f"{idle.seconds.get('kafka') or 0:.2f} CPU s"
        )
        for pipeline in chosen:
            result = results[pipeline.name]
            if result.error is not None:
                continue
            records = args.per_record_records if pipeline.per_record else args.records
            console.print(
                f"[bold]round {round_no}/{args.rounds}[/bold] · {pipeline.name}: "
                f"{records:,} records"
            )
            try:
                m = await run_one(ctx, pipeline, records)
            except Exception as exc:
                result.error = _describe(exc)
                console.print(
                    f"  [red]FAILED: {result.error.strip()}[/red]\n"
                    f"  [red]{pipeline.name} is skipped in the remaining rounds.[/red]"
                )
                continue
            result.runs.append(m)
            extra = ""
            if m.running_rate is not None:
                extra = f", {m.running_rate:,.0f} rec/s once running, first effect after "
                extra += f"{m.startup_s:.2f}s"
            console.print(f"  {m.rate:,.1f} rec/s ({m.seconds:.2f}s{extra})")


MEMORY_AFTER = "courier-batch-file"
"""The memory run follows the pipelines named so (it drains a backlog as `courier-batch-file`)."""


async def run_memory(ctx: Context, report: Report) -> None:
    n = ctx.args.backlog_records
    if ctx.courier is None:
        report.memory_error = "Courier could not be imported (see the courier pipelines)"
        return
    batch = [r for r in report.results if r.name.startswith(MEMORY_AFTER)]
    if all(r.error and not r.runs for r in batch):
        report.memory_error = f"skipped: {batch[0].name} failed ({_first(batch[0].error or '')})"
        console.print(f"[yellow]memory run {report.memory_error}[/yellow]")
        return
    unique = uuid.uuid4().hex[:10]
    topic = f"bench-backlog-{unique}"
    console.print(f"[bold]memory[/bold] · courier-batch-file draining a backlog of {n:,} records")
    with tempfile.TemporaryDirectory(prefix="courier-bench-memory-") as tmp_name:
        try:
            produced_s = await fill_topic(ctx.settings.kafka_bootstrap, topic, n)
            console.print(f"  [dim]{n:,} records produced in {produced_s:.1f}s[/dim]")
            report.memory = await ingest_memory.measure(Path(tmp_name), topic, unique, n)
            console.print(
                f"  peak RSS {report.memory.peak_mb:.0f} MB "
                f"(baseline {report.memory.baseline_mb:.0f} MB), {report.memory.rate:,.0f} rec/s"
            )
        except Exception as exc:
            report.memory_error = _describe(exc)
            console.print(f"  [red]FAILED: {report.memory_error}[/red]")
        finally:
            await delete_topic(ctx.settings.kafka_bootstrap, topic)


async def start_temporal(ctx: Context, problems: list[str]) -> str:
    """Restart the stack's Temporal on an empty database unless ``--keep-temporal``; say how
    the run's database began (for the report)."""
    if ctx.args.keep_temporal:
        return "kept from before the run (`--keep-temporal`)"
    console.print("Temporal: restarting the stack's server on an empty database")
    try:
        await fresh_temporal(ctx.settings)
    except Exception as exc:
        problems.append(f"restarting Temporal on a fresh database failed: {_describe(exc)}")
        console.print(f"[red]{problems[-1]}[/red]")
        return "kept from before the run (the restart on a fresh database failed: see Problems)"
    return (
        "fresh: the stack's dev server stopped, its SQLite file deleted and the server "
        "started again before the first round"
    )


async def main(args: argparse.Namespace) -> int:
    chosen = [BY_NAME[name] for name in args.pipelines]
    ctx = Context(settings=settings_from_env(), args=args)
    results = {p.name: PipelineResults(p.name, p.description) for p in chosen}
    problems: list[str] = []
    temporal_start = await start_temporal(ctx, problems)
    db_start_mb = temporal_db_mb(ctx.settings)
    await prepare(ctx, chosen, results)
    background: list[CpuUsage] = []
    await run_rounds(ctx, chosen, results, background)
    report = Report(
        results=list(results.values()),
        environment=await environment(ctx),
        method=method(args, chosen),
        rounds=args.rounds,
        background=background,
        problems=problems,
    )
    if not args.backlog_records:
        report.memory_error = "skipped (--backlog-records 0)"
    elif not any(name.startswith(MEMORY_AFTER) for name in args.pipelines):
        report.memory_error = f"skipped (no {MEMORY_AFTER}* pipeline among --pipelines)"
    else:
        await run_memory(ctx, report)
    report.temporal_db = TemporalDb(temporal_start, db_start_mb, temporal_db_mb(ctx.settings))
    console.print()
    print_console(report, console)
    if not args.no_docs:
        drew = chart(report, args.chart)
        chart_name = args.chart.name if drew else None
        if chart_name and args.chart.parent.resolve() != args.markdown.parent.resolve():
            chart_name = str(args.chart.resolve())
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        previous = args.markdown.read_text() if args.markdown.exists() else ""
        args.markdown.write_text(markdown(report, chart_name) + kept_sections(previous))
        console.print(f"wrote {args.markdown}" + (f" and {args.chart}" if drew else ""))
    return 0 if all(r.runs for r in results.values()) else 1


# ------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Courier vs Kafka Connect, a naive consumer and bare Temporal, on the local "
        "stack (which must be running; it is left running).",
    )
    parser.add_argument(
        "--records",
        "-n",
        type=int,
        default=200_000,
        help="records per run of the fast pipelines (default 200000)",
    )
    parser.add_argument(
        "--per-record-records",
        type=int,
        default=1000,
        help="records per run of courier-per-record-file and temporal-ceiling (default 1000)",
    )
    parser.add_argument("--rounds", "-r", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--pipelines",
        "-p",
        default=",".join(DEFAULT_PIPELINES),
        help="comma-separated pipelines to run, always in the suite's order, or 'all' (default: "
        "all but courier-batch-file): " + ", ".join(BY_NAME),
    )
    parser.add_argument(
        "--backlog-records",
        type=int,
        default=100_000,
        help="backlog for the memory measurement of courier-batch-file (run when a "
        "courier-batch-file* pipeline is selected; default 100000); 0 skips it",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help=f"workflow starts in flight for the per-record pair (default {DEFAULT_WINDOW})",
    )
    parser.add_argument(
        "--markdown", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md", help="report file"
    )
    parser.add_argument(
        "--chart", type=Path, default=REPO_ROOT / "docs" / "benchmarks.png", help="chart file"
    )
    parser.add_argument("--no-docs", action="store_true", help="only print; write no files")
    parser.add_argument(
        "--keep-temporal",
        action="store_true",
        help="keep the stack's Temporal database (default: restart Temporal on an empty one "
        "first, which ends everything else using that server)",
    )
    args = parser.parse_args(argv)
    names = [ALIASES.get(n.strip(), n.strip()) for n in args.pipelines.split(",") if n.strip()]
    if names == ["all"]:
        names = list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        parser.error(f"unknown pipeline(s) {unknown}; choose from {', '.join(BY_NAME)}")
    args.pipelines = [p.name for p in PIPELINES if p.name in names]
    if args.records < 1 or args.per_record_records < 1 or args.rounds < 1 or args.window < 1:
        parser.error("--records, --per-record-records, --rounds and --window must be ≥ 1")
    if args.backlog_records < 0:
        parser.error("--backlog-records must be ≥ 0")
    return args


def cli(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    code = asyncio.run(main(parse_args(argv)))
    sys.stdout.flush()
    sys.stderr.flush()
    # The Temporal client can abort at interpreter exit (sdk-python#300): skip the finalisers.
    os._exit(code)


if __name__ == "__main__":
    cli()
