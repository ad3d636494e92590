"""What every pipeline of the suite shares: results, CPU accounting, effect watchers, helpers.

Nothing here imports Courier's product code (``courier``, ``ingest``, ``workflows``, …), so the
pipelines that do not need it (Kafka Connect, the naive consumer) run even while the product is
being changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from courier_devtools.stack.control import _SERVICE_TYPES, start_async, stop
from courier_devtools.stack.processes import _children_of, _pid_alive
from courier_devtools.stack.settings import StackSettings
from courier_devtools.stack.temporal import _Temporal

FILE_POLL_S = 0.005
"""How often a file's size is checked while waiting for lines (its mtime refines the end)."""
ROWS_POLL_S = 0.02
"""How often ``SELECT count(*)`` runs while waiting for rows."""
SLOW_POLL_S = 0.25
"""How often visibility is asked (its close times, not the poll, give the end time)."""

_TICKS = os.sysconf("SC_CLK_TCK")


class PipelineError(Exception):
    """A pipeline could not run (did not start, stopped early, timed out); the message says why."""


# ------------------------------------------------------------------------------------ CPU usage
def _tree_cpu(pid: int) -> float | None:
    """CPU seconds of ``pid``, its reaped children and its live descendants; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime stime cutime cstime (fields 14-17 of proc(5); index 11.. after the state field)
    ticks = sum(int(v) for v in fields[11:15])
    for child in _children_of(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            cf = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(cf[11]) + int(cf[12])
    return ticks / _TICKS


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / _TICKS, total / _TICKS


def stack_pids(settings: StackSettings) -> dict[str, int | None]:
    """PIDs of the stack's servers, read from their pid files as ``courier stack`` does.

    ``_Service.pid()`` checks the process is alive and its command line carries the service's
    marker (its data directory or config file), so a reused PID is never taken for a server.
    """
    return {name: kind(settings).pid() for name, kind in _SERVICE_TYPES.items()}


@dataclass
class CpuSnapshot:
    """CPU counters at one instant: per process (by role) and of the whole machine."""

    wall: float
    own: float
    pids: dict[str, int | None]
    procs: dict[str, float | None]
    machine_busy: float
    machine_total: float


class CpuMeter:
    """CPU seconds of this process, the stack's servers and any process a pipeline adds."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.extra: dict[str, int] = {}

    def add(self, role: str, pid: int) -> None:
        """Also account ``pid`` (e.g. the Connect JVM) under ``role`` from the next snapshot."""
        self.extra[role] = pid

    def snapshot(self) -> CpuSnapshot:
        pids: dict[str, int | None] = {**stack_pids(self.settings), **self.extra}
        busy, total = _machine_cpu()
        return CpuSnapshot(
            wall=time.monotonic(),
            own=time.process_time(),
            pids=pids,
            procs={role: (_tree_cpu(pid) if pid else None) for role, pid in pids.items()},
            machine_busy=busy,
            machine_total=total,
        )


@dataclass
class CpuUsage:
    """CPU seconds each role used over one measured interval (None: unknown)."""

    seconds: dict[str, float | None]
    machine_busy_pct: float
    wall_s: float
    notes: list[str] = field(default_factory=list)


def cpu_between(start: CpuSnapshot, end: CpuSnapshot) -> CpuUsage:
    """What was used between two snapshots; a server restarted in between counts as unknown."""
    seconds: dict[str, float | None] = {"harness+in-process": end.own - start.own}
    notes = []
    for role, pid in end.pids.items():
        before, after = start.procs.get(role), end.procs.get(role)
        if role in start.pids and start.pids[role] != pid:
            notes.append(f"{role} restarted during the run (pid {start.pids[role]} → {pid})")
            seconds[role] = None
        elif role not in start.pids:
            seconds[role] = after  # started during the run (e.g. the Connect JVM): all of it
        else:
            seconds[role] = None if before is None or after is None else after - before
    busy = end.machine_busy - start.machine_busy
    total = end.machine_total - start.machine_total
    return CpuUsage(
        seconds, 100.0 * busy / total if total > 0 else 0.0, end.wall - start.wall, notes
    )


async def background_cpu(settings: StackSettings, seconds: float) -> CpuUsage:
    """CPU used while the suite runs nothing: what other users of the machine and stack add."""
    meter = CpuMeter(settings)
    start = meter.snapshot()
    await asyncio.sleep(seconds)
    return cpu_between(start, meter.snapshot())


# --------------------------------------------------------------------------------------- results
@dataclass
class HistoryStats:
    """Temporal history of one run's workflows (all of them, or a sample scaled up)."""

    workflows: int
    sampled: int
    events: float
    """History events of all the run's workflows (estimated from the sample)."""
    actions: float
    """Estimated billable actions: workflow starts + activity attempts (from the sample)."""
    other_action_events: float
    """Other events Temporal Cloud bills as actions (timers, signals, markers, …), if any."""
    records: int

    @property
    def events_per_record(self) -> float:
        return self.events / self.records

    @property
    def actions_per_record(self) -> float:
        return self.actions / self.records


@dataclass
class Measurement:
    """One pipeline, one round."""

    pipeline: str
    records: int
    seconds: float
    """From consumer start to the last record's effect being visible."""
    startup_s: float | None = None
    """From consumer start to the first record's effect being visible."""
    running_s: float | None = None
    """From the first record's effect to the last one's."""
    cpu: CpuUsage | None = None
    history: HistoryStats | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")

    @property
    def running_rate(self) -> float | None:
        if self.running_s is None or self.running_s <= 0:
            return None
        # N records in the span from the first to the last: N - 1 intervals.
        return (self.records - 1) / self.running_s


@dataclass(frozen=True)
class Spread:
    """min / median / max of a few values."""

    low: float
    median: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(min(values), statistics.median(values), max(values))


# ---------------------------------------------------------------------------- effect watchers
@dataclass
class EffectTimes:
    """Wall-clock (epoch) times the first and the last record's effect became visible."""

    first: float
    last: float


class LineCounter:
    """Counts newline-terminated lines of a file that only grows, reading each byte once.

    The file stays open once it exists (``fstat`` is the cheapest poll); call :meth:`close`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.offset = 0
        self.lines = 0

    def poll(self) -> int:
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return self.lines
        size = os.fstat(self.fd).st_size
        while size > self.offset:
            data = os.pread(self.fd, min(size - self.offset, 1 << 22), self.offset)
            if not data:
                break
            self.offset += len(data)
            self.lines += data.count(b"\n")
        return self.lines

    def mtime(self) -> float:
        assert self.fd is not None
        return os.fstat(self.fd).st_mtime

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def count_lines(path: Path) -> int:
    """Newlines in ``path`` (0 if it does not exist)."""
    counter = LineCounter(path)
    try:
        return counter.poll()
    finally:
        counter.close()


async def wait_for_lines(
    path: Path,
    records: int,
    *,
    timeout: float,
    alive: Callable[[], None],
    what: str,
) -> EffectTimes:
    """Wait until ``path`` holds ``records`` lines; return when the first and last appeared.

    Polls every 5 ms. The first line's time is the file's mtime when it was first seen with a
    line (at most one poll late); the last one's is the file's mtime once all lines are there,
    i.e. the time of the write that completed it, whatever the poll interval. ``alive()`` is
    called on every poll and raises if the pipeline stopped.
    """
    counter = LineCounter(path)
    deadline = time.monotonic() + timeout
    first: float | None = None
    try:
        while True:
            alive()
            lines = counter.poll()
            if lines and first is None:
                first = counter.mtime()
            if lines >= records:
                assert first is not None
                return EffectTimes(first, max(first, counter.mtime()))
            if time.monotonic() > deadline:
                raise PipelineError(f"{what}: {lines} of {records} lines after {timeout:.0f}s")
            await asyncio.sleep(FILE_POLL_S)
    finally:
        counter.close()


async def wait_for_rows(
    count: Callable[[], Awaitable[int]],
    records: int,
    *,
    timeout: float,
    alive: Callable[[], None],
    what: str,
) -> EffectTimes:
    """Wait until ``count()`` reaches ``records``; times are when it was seen (20 ms polls)."""
    deadline = time.monotonic() + timeout
    first: float | None = None
    while True:
        alive()
        rows = await count()
        now = time.time()
        if rows and first is None:
            first = now
        if rows >= records:
            assert first is not None
            return EffectTimes(first, now)
        if time.monotonic() > deadline:
            raise PipelineError(f"{what}: {rows} of {records} rows after {timeout:.0f}s")
        await asyncio.sleep(ROWS_POLL_S)


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: str, poll: float = SLOW_POLL_S
) -> None:
    """Await ``check()`` until true; raise :class:`PipelineError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise PipelineError(f"{what} not reached after {timeout:.0f}s")
        await asyncio.sleep(poll)


# ------------------------------------------------------------------------------------ processes
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def terminate(proc: subprocess.Popen[bytes], pid_file: Path | None, timeout: float = 20.0) -> None:
    """Stop a process this suite started (in its own session) by its pid: SIGTERM, then SIGKILL.

    The process group is the one it leads (``start_new_session``), so its pgid is its pid.
    """
    pid = proc.pid
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Anything left in its group (it leads the group; nothing else is in it).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    finally:
        if pid_file is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (zombies count as gone)."""
    return _pid_alive(pid)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def timeout_for(records: int, slowest_rate: float, floor: float = 120.0) -> float:
    """A generous bound for ``records`` at ``slowest_rate`` records/s, at least ``floor`` s."""
    return max(floor, records / slowest_rate)


# ------------------------------------------------------------------------------------- Temporal
def temporal_db(settings: StackSettings) -> Path:
    """The stack's Temporal SQLite database file (``.stack/temporal/temporal.db``)."""
    return _Temporal(settings).db


def temporal_db_mb(settings: StackSettings) -> float:
    """Size of the stack's Temporal database on disk in MB: the file and its write-ahead log."""
    db = temporal_db(settings)
    files = (db, db.with_name(db.name + "-wal"))
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


async def fresh_temporal(settings: StackSettings) -> None:
    """Restart the stack's Temporal server on an empty database.

    Stops it (by PID), deletes its SQLite file and the ``-wal`` and ``-shm`` files beside it,
    and starts it again, waiting until it answers (search attributes registered). Everything
    the server held is gone: run it only where nothing else uses that stack.
    """
    await asyncio.to_thread(stop, ["temporal"], settings=settings, echo=None)
    db = temporal_db(settings)
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    await start_async(["temporal"], settings=settings, echo=None)
