"""The ``postgres`` service: a private cluster built with Debian's PostgreSQL binaries."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from courier_devtools.stack.errors import MissingToolError, ServiceStartError, StackError
from courier_devtools.stack.processes import (
    Echo,
    _cmdline,
    _is_root,
    _pid_alive,
    _port_open,
    _rotate,
    _run,
    _Service,
)
from courier_devtools.stack.settings import (
    POSTGRES_DB,
    POSTGRES_PASSWORD,
    POSTGRES_USER,
    StackSettings,
)

if TYPE_CHECKING:
    import asyncpg

SECURE_USER = "courier_secure"
"""A role that must give its password (scram-sha-256) on 127.0.0.1, unlike every other role of
the stack (trusted): for tests of a destination whose credentials are wrong."""
SECURE_PASSWORD = "courier-secure"
_HBA_COMMENT = (
    f"# Added by `courier stack` (dev/courier_devtools/stack): {SECURE_USER} must give its password"
)


def secure_dsn(settings: StackSettings, password: str = SECURE_PASSWORD) -> str:
    """DSN of the ``courier`` database as :data:`SECURE_USER` with ``password``."""
    return (
        f"postgresql://{SECURE_USER}:{password}@{settings.host}:{settings.postgres_port}/"
        f"{POSTGRES_DB}"
    )


def secure_hba_rule(host: str) -> str:
    """The pg_hba.conf rule that makes :data:`SECURE_USER` give its password from ``host``."""
    return f"host all {SECURE_USER} {host}/32 scram-sha-256"


def with_hba_rule_first(text: str, rule: str) -> str | None:
    """``text`` (a pg_hba.conf) with ``rule`` as its first rule; None if it is already.

    pg_hba.conf is read top down and the first matching rule wins, so the rule must come before
    the cluster's ``trust`` rules. Copies of it further down are removed.
    """
    lines = text.splitlines(keepends=True)
    wanted = rule.split()
    rules = [i for i, line in enumerate(lines) if line.split("#", 1)[0].strip()]
    if rules and lines[rules[0]].split("#", 1)[0].split() == wanted:
        return None
    kept = [
        line
        for line in lines
        if line.split("#", 1)[0].split() != wanted and line.rstrip("\n") != _HBA_COMMENT
    ]
    first = next((i for i, line in enumerate(kept) if line.split("#", 1)[0].strip()), len(kept))
    return "".join([*kept[:first], _HBA_COMMENT + "\n", rule + "\n", *kept[first:]])


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
                self._as_owner(
                    [
                        str(bindir / "initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        "postgres",
                        "--auth-local=trust",
                        "--auth-host=trust",
                        "-E",
                        "UTF8",
                        "--no-locale",
                        "--no-sync",
                    ]
                ),
                what="initdb",
                log=self.log_file,
                cwd=self.data,
            )
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    "\n# Added by `courier stack` (dev/courier_devtools/stack/postgres.py): "
                    "a throw-away dev cluster.\n"
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
            stdin=subprocess.DEVNULL,
            capture_output=True,
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
        cmd = self._as_owner(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "-o",
                f"-p {self.s.postgres_port}",
                "start",
            ]
        )
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.data,
            start_new_session=True,
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
            if not await admin.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", POSTGRES_DB
            ):
                await admin.execute(f"CREATE DATABASE {POSTGRES_DB} OWNER {POSTGRES_USER}")
            await self._ensure_secure_role(admin)
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.s.postgres_dsn, timeout=5)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    async def _ensure_secure_role(self, admin: asyncpg.Connection) -> None:
        """Create :data:`SECURE_USER` and put its password rule first in pg_hba.conf.

        Runs on every start (the probe), so a cluster made before the role existed gets it too;
        it changes nothing when all is in place. A changed pg_hba.conf is reloaded at once.
        """
        import asyncpg

        if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", SECURE_USER):
            await admin.execute("SET password_encryption = 'scram-sha-256'")
            await admin.execute(f"CREATE ROLE {SECURE_USER} LOGIN PASSWORD '{SECURE_PASSWORD}'")
        database = await asyncpg.connect(
            f"postgresql://postgres@{self.s.host}:{self.s.postgres_port}/{POSTGRES_DB}", timeout=5
        )
        try:
            if not await database.fetchval(
                "SELECT has_schema_privilege($1, 'public', 'CREATE')", SECURE_USER
            ):
                await database.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {SECURE_USER}")
        finally:
            await database.close()

        hba = Path(await admin.fetchval("SHOW hba_file"))
        updated = with_hba_rule_first(hba.read_text(), secure_hba_rule(self.s.host))
        if updated is None:
            return
        st = hba.stat()
        tmp = hba.with_name(hba.name + ".tmp")
        tmp.write_text(updated)
        os.chmod(tmp, st.st_mode & 0o777)
        if _is_root():
            os.chown(tmp, st.st_uid, st.st_gid)
        tmp.replace(hba)
        errors = await admin.fetch(
            "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL"
        )
        if errors:
            raise StackError(f"{hba} has errors: {[tuple(e) for e in errors]}")
        await admin.execute("SELECT pg_reload_conf()")
