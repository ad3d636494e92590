"""Courier pipelines, run in this process via ``courier.app.service.run_service``.

- ``courier-batch-file`` / ``courier-batch-file-<max_records>`` / ``courier-batch-postgres``:
  ``ingest: {mode: batch, max_wait: 200ms}`` with ``max_records`` as given (Courier's default
  when not) and one destination at its kind's default ``batch_size`` (5,000 for file and
  PostgreSQL) unless one is given. Timed from ingest start to the last
  record's effect: the file holds N
  lines (the file's mtime at that point) or ``SELECT count(*)`` of the table is N (seen by a
  20 ms poll). Then the run waits for all its workflows to close (not timed), stops Courier and
  checks the file has exactly N lines / the table exactly N rows.
- ``courier-per-record-file``: ``ingest.mode: per_record`` (one ``ExportRecord`` workflow per
  record) and a file destination with ``fsync: never`` (as the original throughput benchmark,
  to compare with the bare Temporal ceiling, which writes nothing). Timed from ingest start to
  the last workflow's close time, once the file holds exactly N lines.

Every run has its own topic, consumer group, workflow task queue and destination name, so its
workflows are exactly ``TaskQueue = '<its queue>'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, Literal

import asyncpg
from temporalio.client import Client

from benchmarks.ceiling import PER_RECORD_SLOWEST, completed, last_close
from benchmarks.common import (
    CpuMeter,
    EffectTimes,
    Measurement,
    PipelineError,
    count_lines,
    cpu_between,
    timeout_for,
    wait_for_lines,
    wait_for_rows,
    wait_until,
)
from benchmarks.histories import history_stats
from courier.app.service import run_service
from courier.config.model import CourierConfig, parse_config
from courier_devtools.stack.settings import StackSettings
from ingest.consumer import Ingest

BATCH_MAX_WAIT = "200ms"
BATCH_SLOWEST = 200.0
"""records/s under which a batch run is taken as stuck (the timeout's basis)."""
MODE_CHECK_S = 10.0
"""For this long after start, a batch run checks ingest does not start per-record workflows."""
STOP_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 120.0

Kind = Literal["file", "postgres"]


def config_dict(
    settings: StackSettings,
    *,
    topic: str,
    unique: str,
    mode: Literal["batch", "per_record"],
    kind: Kind,
    out: Path | None = None,
    fsync: Literal["always", "never"] = "always",
    window: int | None = None,
    mapping: dict[str, Any] | None = None,
    max_records: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """A Courier config (as YAML would give it) with this run's own names and one destination.

    ``mapping``: extra destination fields, e.g. a file ``line`` mapping or PostgreSQL
    ``columns``. ``max_records``: batch mode's ``ingest.max_records``; ``batch_size``: the
    destination's (None: Courier's defaults).
    """
    name = f"bench-{kind}-{unique}"
    destination: dict[str, Any] = {"name": name, "kind": kind}
    if kind == "file":
        assert out is not None
        destination |= {"path": str(out), "fsync": fsync}
    else:
        destination |= {"dsn": settings.postgres_dsn, "table": table_name(unique)}
    destination |= mapping or {}
    ingest: dict[str, Any] = {"mode": mode}
    if mode == "batch":
        if batch_size is not None:
            destination["batch_size"] = batch_size
        ingest["max_wait"] = BATCH_MAX_WAIT
        if max_records is not None:
            ingest["max_records"] = max_records
    return {
        "kafka": {
            "bootstrap_servers": settings.kafka_bootstrap,
            "topics": [topic],
            "group": f"bench-{unique}",
            **({"max_in_flight": window} if window is not None else {}),
        },
        "temporal": {
            "address": settings.temporal_address,
            "namespace": settings.temporal_namespace,
            "workflow_task_queue": f"courier-workflows-bench-{unique}",
        },
        "destinations": [destination],
        "routes": {"default": name},
        "ingest": ingest,
    }


def table_name(unique: str) -> str:
    return f"bench_{unique}"


def query_of(config: CourierConfig) -> str:
    """The visibility query of exactly this run's workflows."""
    return f"TaskQueue = '{config.temporal.workflow_task_queue}'"


class _Running:
    """Courier running in this process (ingest + workflow worker + one destination's worker)."""

    def __init__(self, client: Client, config: CourierConfig) -> None:
        self.client = client
        self.config = config
        self.ingest = Ingest(config, client)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.problem: str | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(
            run_service(
                self.client,
                self.config,
                ingest=self.ingest,
                destinations=[d.name for d in self.config.destinations],
                workflows=True,
                stop=self.stop,
            )
        )

    def alive(self) -> None:
        """Raise if Courier stopped, or the batch-mode check found per-record workflows."""
        if self.problem is not None:
            raise PipelineError(self.problem)
        if self.task is not None and self.task.done():
            self.task.result()  # raise what stopped Courier
            raise PipelineError("Courier stopped before the benchmark finished")

    async def check_batch_mode(self) -> None:
        """Fail fast when ``ingest.mode: batch`` is not honoured (per-record workflows appear)."""
        query = f"{query_of(self.config)} AND WorkflowType = 'ExportRecord'"
        deadline = time.monotonic() + MODE_CHECK_S
        while time.monotonic() < deadline and self.problem is None:
            found = (await self.client.count_workflows(query)).count
            if found:
                self.problem = (
                    f"ingest.mode=batch is not honoured: ingest started {found} per-record "
                    "ExportRecord workflows (batch mode not landed or not wired into ingest)"
                )
                return
            await asyncio.sleep(0.5)

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.task), STOP_TIMEOUT_S)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            raise PipelineError(f"Courier did not stop within {STOP_TIMEOUT_S:.0f}s") from None


async def _all_closed(client: Client, query: str) -> bool:
    """True once the run has workflows and none of them is running (visibility)."""
    total = (await client.count_workflows(query)).count
    running = (await client.count_workflows(f"{query} AND ExecutionStatus = 'Running'")).count
    return total > 0 and running == 0


async def run_batch(
    settings: StackSettings,
    client: Client,
    tmp: Path,
    topic: str,
    unique: str,
    records: int,
    *,
    pipeline: str,
    kind: Kind,
    fsync: Literal["always", "never"] = "always",
    history_sample: int = 500,
    mapping: dict[str, Any] | None = None,
    max_records: int | None = None,
    batch_size: int | None = None,
) -> Measurement:
    """Courier in batch mode until all ``records`` reached the destination.

    ``max_records``: ``ingest.max_records``, records per range at most; ``batch_size``: the
    destination's records per activity at most (None: Courier's defaults); the values the run
    used are in its notes.
    """
    out = tmp / "courier-out.jsonl"
    config = parse_config(
        config_dict(
            settings,
            topic=topic,
            unique=unique,
            mode="batch",
            kind=kind,
            out=out,
            fsync=fsync,
            mapping=mapping,
            max_records=max_records,
            batch_size=batch_size,
        ),
        environ={},
    )
    query = query_of(config)
    pool: asyncpg.Pool | None = None
    if kind == "postgres":
        pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=1)
    table = table_name(unique)

    async def rows() -> int:
        assert pool is not None
        try:
            return int(await pool.fetchval(f'SELECT count(*) FROM "{table}"'))
        except asyncpg.UndefinedTableError:
            return 0

    courier = _Running(client, config)
    meter = CpuMeter(settings)
    try:
        cpu_start = meter.snapshot()
        t0 = time.time()
        courier.start()
        checker = asyncio.create_task(courier.check_batch_mode())
        try:
            timeout = timeout_for(records, BATCH_SLOWEST)
            times: EffectTimes
            if kind == "file":
                times = await wait_for_lines(
                    out, records, timeout=timeout, alive=courier.alive, what=pipeline
                )
            else:
                times = await wait_for_rows(
                    rows, records, timeout=timeout, alive=courier.alive, what=pipeline
                )
            cpu_end = meter.snapshot()
            effect_done = time.time()
            await wait_until(
                lambda: _all_closed(client, query),
                timeout=CLOSE_TIMEOUT_S,
                what=f"all workflows of {pipeline} closed",
            )
            closed_after = await last_close(client, query) - t0
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
            await courier.shutdown()
        exported = count_lines(out) if kind == "file" else await rows()
        if exported != records:
            raise PipelineError(f"{pipeline}: {exported} exported for {records} records")
        failed = (await client.count_workflows(f"{query} AND ExecutionStatus != 'Completed'")).count
    finally:
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.execute(f'DROP TABLE IF EXISTS "{table}"')
            await pool.close()
    history = (
        await history_stats(client, query, records, history_sample) if history_sample else None
    )
    notes = [
        f"exactly {records} {'lines' if kind == 'file' else 'rows'}",
        f"max_records {config.ingest.max_records}",
        f"batch_size {next(iter(config.destinations)).batch_size}",
        f"last workflow closed {closed_after - (times.last - t0):+.2f}s after the last effect "
        f"(effect seen {effect_done - times.last:.2f}s after it happened)",
    ]
    if kind == "file":
        notes.append(f"fsync: {fsync}")
    if failed:
        notes.append(f"{failed} workflows did not complete")
    return Measurement(
        pipeline=pipeline,
        records=records,
        seconds=times.last - t0,
        startup_s=times.first - t0,
        running_s=times.last - times.first,
        cpu=cpu_between(cpu_start, cpu_end),
        history=history,
        notes=notes,
    )


async def run_per_record(
    settings: StackSettings,
    client: Client,
    tmp: Path,
    topic: str,
    unique: str,
    records: int,
    *,
    window: int | None = None,
    history_sample: int = 20,
) -> Measurement:
    """Courier in per-record mode until all ``records`` workflows completed."""
    out = tmp / "courier-out.jsonl"
    config = parse_config(
        config_dict(
            settings,
            topic=topic,
            unique=unique,
            mode="per_record",
            kind="file",
            out=out,
            fsync="never",
            window=window,
        ),
        environ={},
    )
    query = query_of(config)
    courier = _Running(client, config)
    meter = CpuMeter(settings)
    timeout = timeout_for(records, PER_RECORD_SLOWEST)

    async def all_completed() -> bool:
        courier.alive()
        return await completed(client, query) >= records

    cpu_start = meter.snapshot()
    t0 = time.time()
    courier.start()
    try:
        times = await wait_for_lines(
            out, records, timeout=timeout, alive=courier.alive, what="courier-per-record-file"
        )
        await wait_until(
            all_completed, timeout=timeout, what=f"{records} completed ExportRecord workflows"
        )
        cpu_end = meter.snapshot()
    finally:
        await courier.shutdown()
    seconds = await last_close(client, query) - t0
    lines = count_lines(out)
    if lines != records:
        raise PipelineError(f"courier-per-record-file: {lines} lines for {records} records")
    history = await history_stats(client, query, records, history_sample)
    return Measurement(
        pipeline="courier-per-record-file",
        records=records,
        seconds=seconds,
        startup_s=times.first - t0,
        running_s=times.last - times.first,
        cpu=cpu_between(cpu_start, cpu_end),
        history=history,
        notes=[
            f"exactly {records} lines; fsync: never; ingest counts {dict(courier.ingest.counts)}"
        ],
    )
