"""Start, stop, status and logs of the stack's services (the registry is :data:`_SERVICE_TYPES`)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from courier_devtools.stack.errors import PortInUseError, ServiceStartError, StackError
from courier_devtools.stack.kafka import _Kafka
from courier_devtools.stack.postgres import _Postgres
from courier_devtools.stack.processes import Echo, _pid_alive, _port_free, _rss_mb, _Service, _tail
from courier_devtools.stack.schema_registry import _SchemaRegistry
from courier_devtools.stack.settings import StackSettings, settings_from_env
from courier_devtools.stack.temporal import _Temporal

# The services, in display order: adding one is a module with a _Service subclass plus a line here.
_SERVICE_TYPES: dict[str, type[_Service]] = {
    "kafka": _Kafka,
    "temporal": _Temporal,
    "postgres": _Postgres,
    "schema-registry": _SchemaRegistry,
}

SERVICES: tuple[str, ...] = tuple(_SERVICE_TYPES)
"""Names of the services, in display order."""


def _services(names: Iterable[str] | None, settings: StackSettings) -> list[_Service]:
    chosen = list(SERVICES) if not names else list(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in _SERVICE_TYPES]
    if unknown:
        raise StackError(
            f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}"
        )
    return [_SERVICE_TYPES[n](settings) for n in SERVICES if n in chosen]


# ----------------------------------------------------------------------------------- operations
@dataclass(frozen=True)
class ServiceStatus:
    """State of one service, as shown by ``courier stack status``."""

    name: str
    running: bool
    pid: int | None
    port: int
    listen: str
    rss_mb: float | None = None
    healthy: bool | None = None


@dataclass(frozen=True)
class StartResult:
    """What :func:`start_async` did: the services it started (others were running already)."""

    started: tuple[str, ...]
    settings: StackSettings


def check_ports(services: Iterable[str], settings: StackSettings) -> None:
    """Raise :class:`PortInUseError` if a port of ``services`` is taken."""
    problems = []
    for name in services:
        for port, var in settings.ports()[name]:
            if not _port_free(settings.host, port):
                problems.append(
                    f"port {port} ({name}) is already in use by another program: stop it, "
                    f"or choose another port with {var}=<port>"
                )
    if problems:
        raise PortInUseError("\n".join(problems))


@contextlib.asynccontextmanager
async def _start_lock(settings: StackSettings) -> AsyncIterator[None]:
    """Serialise concurrent ``start`` calls on one stack directory."""
    run = settings.stack_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    fh = (run / "start.lock").open("w")
    try:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.2)
        yield
    finally:
        fh.close()


class _Aborted(Exception):
    """Another service failed to start: stop waiting for this one."""


async def _wait_ready(
    svc: _Service, pid: int, timeout: float, abort: asyncio.Event | None = None
) -> None:
    """Probe ``svc`` until it answers; fail fast if its process exits."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if abort is not None and abort.is_set():
            raise _Aborted
        if not _pid_alive(pid):
            raise ServiceStartError(f"{svc.name} exited during start-up")
        try:
            await asyncio.wait_for(svc.probe(), timeout=10)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            last = exc
        await asyncio.sleep(0.25)
    raise ServiceStartError(f"{svc.name} not ready after {timeout:.0f}s (last probe: {last!r})")


def _with_log_tail(svc: _Service, exc: BaseException, lines: int = 30) -> ServiceStartError:
    tail = "\n".join(_tail(svc.log_file, lines))
    return ServiceStartError(
        f"{svc.name} failed to start: {exc}\n--- last lines of {svc.log_file}:\n{tail}"
    )


def _locked(echo: Echo | None) -> Echo:
    """``echo`` made safe to call from several threads (or a no-op if None)."""
    if echo is None:
        return lambda _msg: None
    lock = threading.Lock()

    def say(msg: str) -> None:
        with lock:
            echo(msg)

    return say


def _quiet_client_loggers() -> None:
    import logging

    for name in ("aiokafka", "kafka", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


async def start_async(
    services: Iterable[str] | None = None,
    *,
    settings: StackSettings | None = None,
    echo: Echo | None = None,
) -> StartResult:
    """Start ``services`` (default: all) and wait until each is ready; idempotent.

    Running healthy services are left alone; stale pid files are cleaned up. If one service
    fails, the services started by this call are stopped again and :class:`ServiceStartError`
    carries the tail of the failing service's log.
    """
    settings = settings or settings_from_env()
    say = _locked(echo)
    svcs = _services(services, settings)
    _quiet_client_loggers()
    async with _start_lock(settings):
        running = {svc.name: pid for svc in svcs if (pid := svc.pid()) is not None}
        todo = [svc for svc in svcs if svc.name not in running]
        for svc in svcs:
            if svc.name in running:
                svc.check_same_ports()
        for svc in todo:
            svc.check_tools()
        check_ports([svc.name for svc in todo], settings)

        seconds: dict[str, float] = {}
        launched: dict[str, int] = {}

        abort = asyncio.Event()  # set when one service fails: the others stop waiting

        def launch(svc: _Service) -> int:
            pid = svc.launch()
            svc.write_pid(pid)  # at once, so that a later stop() finds it whatever happens
            launched[svc.name] = pid
            return pid

        async def ensure_running(svc: _Service) -> None:
            t0 = time.monotonic()
            pid = running.get(svc.name)
            try:
                if pid is None:
                    await asyncio.to_thread(svc.prepare, say)
                    if abort.is_set():
                        return
                    say(f"{svc.name}: starting")
                    pid = await asyncio.to_thread(launch, svc)
                await _wait_ready(svc, pid, svc.start_timeout, abort)
            except _Aborted:
                return
            except Exception as exc:
                abort.set()
                if isinstance(exc, (ServiceStartError, OSError)) or svc.name in launched:
                    raise _with_log_tail(svc, exc) from exc
                raise
            seconds[svc.name] = time.monotonic() - t0
            if svc.name in launched:
                say(f"{svc.name}: ready in {seconds[svc.name]:.1f}s")

        tasks = [asyncio.ensure_future(ensure_running(svc)) for svc in svcs]
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        except BaseException:
            abort.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            _stop_services([s for s in svcs if s.name in launched], say)
            raise
    return StartResult(
        started=tuple(s.name for s in svcs if s.name in launched),
        settings=settings,
    )


def start(
    services: Iterable[str] | None = None,
    *,
    settings: StackSettings | None = None,
    echo: Echo | None = print,
    summary: bool = True,
) -> StartResult:
    """Start the stack (see :func:`start_async`) and print where each service listens."""
    settings = settings or settings_from_env()
    t0 = time.monotonic()
    result = asyncio.run(start_async(services, settings=settings, echo=echo))
    if echo is not None and summary:
        for svc in _services(services, settings):
            how = "started" if svc.name in result.started else "already running"
            echo(f"{svc.name:<9} {how:<16} {svc.listen()}")
        echo(f"Temporal UI: {settings.temporal_ui_url}   (total {time.monotonic() - t0:.1f}s)")
    return result


def _stop_services(svcs: Sequence[_Service], say: Echo) -> list[str]:
    stopped: list[str] = []
    threads: list[threading.Thread] = []
    for svc in svcs:
        pid = svc.pid()
        if pid is None:
            continue
        say(f"{svc.name}: stopping pid {pid}")
        t = threading.Thread(target=svc.terminate, args=(pid,))
        t.start()
        threads.append(t)
        stopped.append(svc.name)
    for t in threads:
        t.join()
    return stopped


def stop(
    services: Iterable[str] | None = None,
    *,
    settings: StackSettings | None = None,
    echo: Echo | None = print,
) -> list[str]:
    """Stop running services (default: all) by PID: signal, wait, then SIGKILL. Returns names."""
    settings = settings or settings_from_env()
    return _stop_services(_services(services, settings), _locked(echo))


async def status_async(
    services: Iterable[str] | None = None,
    *,
    settings: StackSettings | None = None,
    probe: bool = True,
) -> list[ServiceStatus]:
    """Status of each service: running, pid, main port, RSS in MB and (if ``probe``) health."""
    settings = settings or settings_from_env()
    _quiet_client_loggers()
    out = []
    for svc in _services(services, settings):
        pid = svc.pid()
        healthy = None
        if pid is not None and probe:
            try:
                await asyncio.wait_for(svc.probe(), timeout=5)
                healthy = True
            except Exception:
                healthy = False
        out.append(
            ServiceStatus(
                name=svc.name,
                running=pid is not None,
                pid=pid,
                port=settings.ports()[svc.name][0][0],
                listen=svc.listen(),
                rss_mb=_rss_mb(pid) if pid is not None else None,
                healthy=healthy,
            )
        )
    return out


def status(
    services: Iterable[str] | None = None,
    *,
    settings: StackSettings | None = None,
    probe: bool = True,
) -> list[ServiceStatus]:
    """Synchronous :func:`status_async`."""
    return asyncio.run(status_async(services, settings=settings, probe=probe))


def log_path(service: str, *, settings: StackSettings | None = None) -> Path:
    """Path of a service's log file."""
    settings = settings or settings_from_env()
    return _services([service], settings)[0].log_file


def tail_log(service: str, lines: int = 50, *, settings: StackSettings | None = None) -> list[str]:
    """The last ``lines`` lines of a service's log."""
    return _tail(log_path(service, settings=settings), lines)


def follow_log(
    service: str, *, settings: StackSettings | None = None, poll: float = 0.25
) -> Iterator[str]:
    """Yield new lines appended to a service's log, forever (like ``tail -f``)."""
    path = log_path(service, settings=settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)
    fh = path.open("rb")
    fh.seek(0, os.SEEK_END)
    buf = b""
    try:
        while True:
            chunk = fh.read()
            if chunk:
                buf += chunk
                *done, buf = buf.split(b"\n")
                for line in done:
                    yield line.decode(errors="replace")
                continue
            with contextlib.suppress(OSError):
                if path.stat().st_size < fh.tell():  # rotated or truncated
                    fh.close()
                    fh = path.open("rb")
            time.sleep(poll)
    finally:
        fh.close()


def logs(
    service: str,
    *,
    follow: bool = False,
    lines: int = 50,
    settings: StackSettings | None = None,
    echo: Echo = print,
) -> None:
    """Print the last ``lines`` lines of a service's log, then keep following if ``follow``."""
    for line in tail_log(service, lines, settings=settings):
        echo(line)
    if follow:
        for line in follow_log(service, settings=settings):
            echo(line)
