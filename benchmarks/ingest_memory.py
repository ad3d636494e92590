"""Memory of Courier (batch mode, file destination) draining a backlog, in a process of its own.

The suite produces the backlog (``--backlog-records``, default 100,000) to a fresh topic first,
then starts ``python -m benchmarks.ingest_memory SPEC.json`` in its own process group (pid in
``memory.pid`` in the run's temporary directory) and always stops it by that pid. That child
connects to Temporal, notes its resident memory, runs the ``courier-batch-file`` pipeline
(ingest, the workflow worker and the file destination's worker, all in that one process, as
``courier run`` would) until the file holds every record and all workflows closed, and reports
its peak resident memory (``VmHWM`` of ``/proc/self/status``; ``ru_maxrss`` agrees).

A process of its own, because the suite's process has held other pipelines' records and
workflows before (Python rarely returns freed memory to the OS), which would inflate the peak.
The figure is ingest *and* workers together, not ingest alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import PipelineError, terminate
from courier_devtools.stack.processes import _tail
from courier_devtools.stack.settings import REPO_ROOT, settings_from_env

CHILD_TIMEOUT_FLOOR_S = 300.0


@dataclass
class MemoryResult:
    """What the child reported."""

    records: int
    baseline_mb: float
    """VmRSS after imports and the Temporal connection, before Courier started."""
    peak_mb: float
    """VmHWM at the end: the peak resident memory of the whole process."""
    seconds: float
    rate: float
    notes: list[str]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


async def measure(tmp: Path, topic: str, unique: str, records: int) -> MemoryResult:
    """Run the child on ``topic`` (already holding ``records`` records); return its figures."""
    spec, result = tmp / "memory-spec.json", tmp / "memory-result.json"
    log, pid_file = tmp / "memory.log", tmp / "memory.pid"
    spec.write_text(
        json.dumps(
            {
                "tmp": str(tmp),
                "topic": topic,
                "unique": unique,
                "records": records,
                "out": str(result),
            }
        )
    )
    timeout = max(CHILD_TIMEOUT_FLOOR_S, records / 100.0)
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.ingest_memory", str(spec)],
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
    try:
        pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise PipelineError(f"the memory run did not finish within {timeout:.0f}s")
            await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(terminate, proc, pid_file)
    if proc.returncode != 0 or not result.exists():
        tail = "\n".join(_tail(log, 15))
        raise PipelineError(f"the memory run failed (exit {proc.returncode}); log tail:\n{tail}")
    data: dict[str, Any] = json.loads(result.read_text())
    return MemoryResult(**data)


async def _child(spec: dict[str, Any]) -> dict[str, Any]:
    from temporalio.client import Client

    from benchmarks.courier_runs import run_batch

    settings = settings_from_env()
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    baseline_kb = _status_kb("VmRSS")
    records = int(spec["records"])
    measurement = await run_batch(
        settings,
        client,
        Path(spec["tmp"]),
        spec["topic"],
        spec["unique"],
        records,
        pipeline="courier-batch-file (backlog)",
        kind="file",
        fsync="always",
        history_sample=0,
    )
    peak_kb = _status_kb("VmHWM")
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "records": records,
        "baseline_mb": baseline_kb / 1024,
        "peak_mb": peak_kb / 1024,
        "seconds": measurement.seconds,
        "rate": measurement.rate,
        "notes": [*measurement.notes, f"ru_maxrss {maxrss_kb / 1024:.0f} MB"],
    }


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[0]).read_text())
    data = asyncio.run(_child(spec))
    Path(spec["out"]).write_text(json.dumps(data))
    sys.stdout.flush()
    sys.stderr.flush()
    # The Temporal client can abort at interpreter exit (sdk-python#300): skip the finalisers.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
