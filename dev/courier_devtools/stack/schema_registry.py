"""The ``schema-registry`` service: Apicurio Registry (in memory) with its Confluent-compatible API.

Built once with Maven from ``stack/schema-registry/`` (Maven Central has the registry's classes
but no runnable jar, so Quarkus' build step makes one) into ``.stack/schema-registry/app``, and
run as ``java -jar``. Clients use :attr:`StackSettings.schema_registry_url`
(``http://127.0.0.1:8081/apis/ccompat/v7``). Schemas are kept in an H2 file under
``.stack/schema-registry/data``, so a restart keeps them and their IDs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
import time
from pathlib import Path

from courier_devtools.stack.errors import MissingToolError, StackError
from courier_devtools.stack.processes import Echo, _port_open, _run, _Service
from courier_devtools.stack.settings import REPO_ROOT, StackSettings

SOURCE = REPO_ROOT / "stack" / "schema-registry"
"""The Maven project that builds the registry."""

RUNNER = "schema-registry-1-runner.jar"


def _source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in SOURCE.rglob("*") if p.is_file() and "target" not in p.parts):
        digest.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class _SchemaRegistry(_Service):
    name = "schema-registry"
    start_timeout = 120.0
    stop_timeout = 20.0

    @property
    def port(self) -> int:
        return self.s.schema_registry_port

    @property
    def home(self) -> Path:
        return self.root / "schema-registry"

    @property
    def app(self) -> Path:
        return self.home / "app"

    @property
    def marker(self) -> str:
        return str(self.app / RUNNER)

    @property
    def url(self) -> str:
        """Base URL of the Confluent-compatible API."""
        return f"http://{self.s.host}:{self.port}/apis/ccompat/v7"

    def listen(self) -> str:
        return self.url

    @staticmethod
    def java() -> str | None:
        home = os.environ.get("JAVA_HOME")
        if home and (Path(home) / "bin" / "java").exists():
            return str(Path(home) / "bin" / "java")
        return shutil.which("java")

    def built(self) -> bool:
        """Whether ``app/`` holds a build of the current ``stack/schema-registry`` sources."""
        stamp = self.home / "app.sha256"
        return (
            (self.app / RUNNER).exists()
            and stamp.exists()
            and stamp.read_text().strip() == _source_hash()
        )

    def check_tools(self) -> None:
        if self.java() is None:
            raise MissingToolError(
                "java not found: the schema registry needs Java 17+ "
                "(Debian: apt-get install openjdk-17-jre-headless)"
            )
        if not self.built() and shutil.which("mvn") is None:
            raise MissingToolError(
                "mvn not found: it builds the schema registry once (Debian: apt-get install maven)"
            )

    def prepare(self, echo: Echo) -> None:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        if self.built():
            return
        echo("schema-registry: building Apicurio Registry from Maven Central (once)")
        build = self.home / "build"
        shutil.rmtree(build, ignore_errors=True)
        shutil.copytree(SOURCE, build, ignore=shutil.ignore_patterns("target"))
        _run(
            [
                shutil.which("mvn") or "mvn",
                "-B",
                "-q",
                "-f",
                str(build / "pom.xml"),
                "-DskipTests",
                "package",
            ],
            what="Building the schema registry with Maven",
            log=logs / "schema-registry-mvn.log",
        )
        tmp = self.home / "app.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.move(str(build / "target" / RUNNER), str(tmp / RUNNER))
        shutil.move(str(build / "target" / "lib"), str(tmp / "lib"))
        shutil.rmtree(self.app, ignore_errors=True)
        tmp.rename(self.app)
        shutil.rmtree(build, ignore_errors=True)
        (self.home / "app.sha256").write_text(_source_hash() + "\n")

    def launch(self) -> int:
        cmd = [
            self.java() or "java",
            "-Xmx256m",
            "-XX:+ExitOnOutOfMemoryError",
            f"-Dquarkus.http.host={self.s.host}",
            f"-Dquarkus.http.port={self.port}",
            # Schemas in an H2 file under the stack, so a restart keeps their IDs.
            f"-DREGISTRY_DATASOURCE_URL=jdbc:h2:file:{self.home / 'data' / 'registry'}",
            "-jar",
            str(self.app / RUNNER),
        ]
        return self._popen(cmd, cwd=self.home)

    async def probe(self) -> None:
        if not await _port_open(self.s.host, self.port):
            raise ConnectionError(f"{self.url} not accepting connections yet")
        import httpx

        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{self.url}/subjects")
            response.raise_for_status()


class PrivateSchemaRegistry:
    """A second registry for one test: its own port and data, the stack's build, stopped by PID.

    The stack's registry must have been built (``courier stack start`` did it); stopping this
    one never touches the stack's.
    """

    def __init__(self, settings: StackSettings, directory: Path, port: int) -> None:
        self._svc = _SchemaRegistry(
            dataclasses.replace(settings, stack_dir=directory, schema_registry_port=port)
        )
        shared = _SchemaRegistry(settings)
        if not shared.built():
            raise StackError("the stack's schema registry is not built: courier stack start")
        self._svc.home.mkdir(parents=True, exist_ok=True)
        if not self._svc.app.exists():
            self._svc.app.symlink_to(shared.app, target_is_directory=True)
            shutil.copy(shared.home / "app.sha256", self._svc.home / "app.sha256")
        self._pid: int | None = None

    @property
    def url(self) -> str:
        """Base URL of its Confluent-compatible API."""
        return self._svc.url

    async def start(self, timeout: float = 120.0) -> None:
        """Launch it (keeping the schemas of an earlier run) and wait until it answers."""
        self._svc.prepare(lambda _msg: None)
        self._pid = self._svc.launch()
        self._svc.write_pid(self._pid)
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._svc.probe()
                return
            except Exception as err:
                if time.monotonic() > deadline:
                    self.stop()
                    raise StackError(f"private schema registry not ready: {err!r}") from err
            await asyncio.sleep(0.25)

    def stop(self) -> None:
        """Stop it by PID (no-op if it is not running)."""
        if self._pid is not None:
            self._svc.terminate(self._pid)
            self._pid = None
