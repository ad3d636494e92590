"""Pipeline ``kafka-connect-file``: Apache Kafka Connect standalone with its FileStreamSink.

The worker's jars (``benchmarks/kafka-connect/pom.xml``, all 4.3.1) are fetched with Maven once
into ``.stack/kafka-connect/lib`` (refetched when the pom changes). Each run starts
``ConnectStandalone`` in its own process group with a fresh consumer group, offsets file and
output file in the run's temporary directory, records its pid in ``connect.pid`` there, waits
for the file to hold all N lines and always terminates the JVM by that pid.

Timed from the ``java`` launch. Reported apart: JVM and connector start (launch → first line)
and the rate once running (first line → last line).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    CpuMeter,
    Measurement,
    PipelineError,
    count_lines,
    cpu_between,
    free_port,
    terminate,
    timeout_for,
    wait_for_lines,
)
from courier_devtools.stack.processes import _tail
from courier_devtools.stack.settings import StackSettings

HERE = Path(__file__).resolve().parent / "kafka-connect"
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j2.properties"
MAIN_CLASS = "org.apache.kafka.connect.cli.ConnectStandalone"
MAVEN_TIMEOUT_S = 900.0
CONNECT_START_TIMEOUT_S = 120.0
JVM_OPTS = ["-Xms256m", "-Xmx2g"]  # what Kafka's connect-standalone.sh sets


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise PipelineError("java not found: Kafka Connect needs Java 17+")
    return found


def lib_dir(settings: StackSettings) -> Path:
    return settings.stack_dir / "kafka-connect" / "lib"


def connect_version(settings: StackSettings) -> str | None:
    """The connect-runtime version in the cached classpath, if fetched."""
    for jar in lib_dir(settings).glob("connect-runtime-*.jar"):
        return jar.name.removeprefix("connect-runtime-").removesuffix(".jar")
    return None


def prepare(settings: StackSettings, echo: Callable[[str], None]) -> Path:
    """The classpath directory, fetched with Maven unless cached for this pom (blocking)."""
    lib = lib_dir(settings)
    stamp = lib.parent / "lib.sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if lib.is_dir() and stamp.exists() and stamp.read_text().strip() == digest:
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PipelineError("mvn not found: it fetches the Kafka Connect jars once")
    echo(f"kafka-connect: fetching the Connect jars with Maven into {lib} (once)")
    tmp = lib.with_name("lib.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={tmp}",
    ]
    log = settings.stack_dir / "logs" / "kafka-connect-mvn.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=MAVEN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise PipelineError(f"Maven did not finish in {MAVEN_TIMEOUT_S:.0f}s") from None
    output = proc.stdout + proc.stderr
    log.write_text(f"$ {' '.join(cmd)}\n{output}")
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise PipelineError(f"Maven failed (exit {proc.returncode}), see {log}:\n{tail}")
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    stamp.write_text(digest + "\n")
    return lib


def _properties(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))


async def run(
    settings: StackSettings,
    lib: Path,
    tmp: Path,
    topic: str,
    unique: str,
    records: int,
) -> Measurement:
    """Run Connect standalone until the sink file holds ``records`` lines; always stop it."""
    out, log, pid_file = tmp / "connect-out.txt", tmp / "connect.log", tmp / "connect.pid"
    worker, sink = tmp / "worker.properties", tmp / "sink.properties"
    _properties(
        worker,
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.storage.StringConverter",
            "offset.storage.file.filename": str(tmp / "connect.offsets"),
            "listeners": f"http://127.0.0.1:{free_port()}",
        },
    )
    _properties(
        sink,
        {
            "name": f"bench-file-sink-{unique}",  # its consumer group: connect-<name>
            "connector.class": "FileStreamSink",
            "tasks.max": "1",
            "file": str(out),
            "topics": topic,
        },
    )
    cmd = [
        java(),
        *JVM_OPTS,
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J}",
        "-cp",
        f"{lib}/*",
        MAIN_CLASS,
        str(worker),
        str(sink),
    ]
    meter = CpuMeter(settings)
    start = meter.snapshot()
    t0 = time.time()
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            start_new_session=True,
        )
    try:
        pid_file.write_text(f"{proc.pid}\n")
        meter.add("connect JVM", proc.pid)

        def alive() -> None:
            code = proc.poll()
            if code is not None:
                tail = "\n".join(_tail(log, 15))
                raise PipelineError(f"Kafka Connect exited with code {code}; log tail:\n{tail}")

        times = await wait_for_lines(
            out,
            records,
            timeout=CONNECT_START_TIMEOUT_S + timeout_for(records, 2_000.0, floor=60.0),
            alive=alive,
            what="Kafka Connect FileStreamSink",
        )
        end = meter.snapshot()
    finally:
        await asyncio.to_thread(terminate, proc, pid_file)
    lines = count_lines(out)
    notes = [f"JVM opts {' '.join(JVM_OPTS)}; Connect defaults otherwise (max.poll.records 500)"]
    if lines != records:
        notes.append(f"file has {lines} lines for {records} records")
    return Measurement(
        pipeline="kafka-connect-file",
        records=records,
        seconds=times.last - t0,
        startup_s=times.first - t0,
        running_s=times.last - times.first,
        cpu=cpu_between(start, end),
        notes=notes,
    )
