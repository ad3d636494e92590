"""Process helpers (pids, ports, memory, logs, short commands) and the :class:`_Service` base."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from courier_devtools.stack.errors import StackError
from courier_devtools.stack.settings import StackSettings

Echo = Callable[[str], None]


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # processes started by this Python process


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    return True


def _cmdline(pid: int, *, settle_s: float = 1.0) -> str | None:
    """The process's command line; None if unreadable (not Linux, or gone).

    Right around exec the kernel shows an empty command line for a moment, which would make a
    fresh process look like a stranger (or a stranger like ours): wait for it to settle.
    """
    deadline = time.monotonic() + settle_s
    while True:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if raw or time.monotonic() >= deadline:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.01)


def _children_of(pid: int) -> list[int]:
    """All descendants of ``pid`` (Linux /proc; empty elsewhere)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` plus its descendants, in MB."""
    total_kb = 0
    found = False
    for p in [pid, *_children_of(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    found = True
        except (OSError, ValueError):
            continue
    return round(total_kb / 1024, 1) if found else None


def _port_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port`` (we can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


async def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _tail(path: Path, lines: int) -> list[str]:
    """Last ``lines`` lines of a text file (empty if missing)."""
    if not path.exists():
        return []
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        block = min(size, max(8192, lines * 300))
        while True:
            fh.seek(size - block)
            data = fh.read()
            if data.count(b"\n") > lines or block == size:
                break
            block = min(size, block * 4)
    return data.decode(errors="replace").splitlines()[-lines:] if lines > 0 else []


def _rotate(path: Path, max_bytes: int = 50 * 1024 * 1024) -> None:
    """Move a log aside to ``<name>.1`` once it is larger than ``max_bytes``."""
    with contextlib.suppress(OSError):
        if path.stat().st_size > max_bytes:
            path.replace(path.with_name(path.name + ".1"))


def _run(cmd: Sequence[str], *, what: str, log: Path | None = None, **kwargs: object) -> str:
    """Run a short command; raise :class:`StackError` with its output if it fails."""
    proc = subprocess.run(
        list(cmd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )
    output = (proc.stdout or "") + (proc.stderr or "")
    if log is not None:
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{output}")
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise StackError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return output


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


class _Service:
    """One service of the stack: how to prepare, launch, probe and stop it."""

    name: str = ""
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 20.0
    start_timeout: float = 90.0

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.root = settings.stack_dir

    # paths
    @property
    def pid_file(self) -> Path:
        return self.root / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "logs" / f"{self.name}.log"

    @property
    def marker(self) -> str:
        """A string found in the command line of our process (guards against PID reuse)."""
        raise NotImplementedError

    # state
    def pid(self) -> int | None:
        """PID of our running process, or None (stale pid files are removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        cmd = _cmdline(pid)
        if _pid_alive(pid) and (cmd is None or self.marker in cmd):
            return pid
        for path in (self.pid_file, self.ports_file):
            with contextlib.suppress(OSError):
                path.unlink()
        return None

    @property
    def ports_file(self) -> Path:
        return self.root / "run" / f"{self.name}.ports"

    def port_spec(self) -> str:
        """The ports this service is configured with, e.g. ``9092 9093``."""
        return " ".join(str(port) for port, _ in self.s.ports()[self.name])

    def write_pid(self, pid: int) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid}\n")
        self.ports_file.write_text(self.port_spec() + "\n")

    def check_same_ports(self) -> None:
        """Raise if the running service was started with other ports than configured now."""
        try:
            running = self.ports_file.read_text().strip()
        except OSError:
            return
        if running != self.port_spec():
            raise StackError(
                f"{self.name} is running on port(s) {running}, but the environment asks for "
                f"{self.port_spec()}: stop it first (courier stack stop {self.name})"
            )

    def listen(self) -> str:
        """Human-readable description of where the service listens."""
        raise NotImplementedError

    # lifecycle
    def check_tools(self) -> None:
        """Raise :class:`MissingToolError` if a program this service needs is missing."""

    def prepare(self, echo: Echo) -> None:
        """Blocking one-time set-up (downloads, formatting, initdb); cached across runs."""

    def launch(self) -> int:
        """Start the process detached; return its PID."""
        raise NotImplementedError

    async def probe(self) -> None:
        """Raise if the service is not ready to serve clients."""
        raise NotImplementedError

    def _popen(self, cmd: Sequence[str], *, cwd: Path | None = None) -> int:
        """Start ``cmd`` in its own session with output appended to the service log."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        _rotate(self.log_file)
        with self.log_file.open("ab") as log:
            log.write(f"\n===== courier stack: starting {self.name} at {time.ctime()}\n".encode())
            log.write(f"===== $ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        return proc.pid

    def terminate(self, pid: int) -> None:
        """Stop ``pid`` with :attr:`stop_signal`, then SIGKILL it (and its children) on timeout."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, self.stop_signal)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            for p in [*_children_of(pid), pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for path in (self.pid_file, self.ports_file):
            with contextlib.suppress(OSError):
                path.unlink()
