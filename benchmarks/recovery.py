"""Recovery after ``kill -9`` of a destination worker, with and without heartbeats.

``python -m benchmarks.recovery [--rounds 3] [--records 8]`` on the running local stack. Each
trial runs Courier as real processes — ``courier ingest``, ``courier worker --workflows`` and
``courier worker -d NAME`` — against a REST destination (this process's recording receiver)
that answers after 2 s, so every record's export is in flight. Once all ``--records`` requests
have arrived, the destination worker is killed with SIGKILL and a replacement started at once.
Measured: seconds from the kill until every workflow has completed. Variant A turns heartbeats
off (``timeouts.heartbeat: null``: only the 30 s attempt timeout notices the dead worker), B
uses the default 5 s heartbeat timeout. A and B alternate within each round (order swapped
every round); min/median/max over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client

from benchmarks.common import terminate
from courier_devtools.receiver import Receiver
from courier_devtools.stack.settings import settings_from_env
from courier_devtools.topics import create_topic, produce

COURIER = str(Path(sys.executable).with_name("courier"))
VARIANTS = {"A: no heartbeat": None, "B: heartbeat 5s": "5s"}
ANSWER_DELAY_S = 2.0
ATTEMPT_TIMEOUT = "30s"


def _config(settings: Any, unique: str, url: str, heartbeat: str | None) -> dict[str, Any]:
    return {
        "kafka": {
            "bootstrap_servers": settings.kafka_bootstrap,
            "topics": [f"recovery-{unique}"],
            "group": f"recovery-{unique}",
            "commit_interval": "200ms",
        },
        "temporal": {
            "address": settings.temporal_address,
            "workflow_task_queue": f"recovery-workflows-{unique}",
        },
        "destinations": [
            {
                "name": f"api-{unique}",
                "kind": "rest",
                "url": f"{url}/r/{{key}}",
                "max_concurrency": 16,
                "retry": {"initial_interval": "200ms", "maximum_interval": "1s"},
                "timeouts": {"attempt": ATTEMPT_TIMEOUT, "heartbeat": heartbeat},
            }
        ],
        "routes": {"default": f"api-{unique}"},
    }


def _start(args: list[str], config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [COURIER, *args, "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "NO_COLOR": "1"},
        )


async def trial(
    client: Client,
    settings: Any,
    receiver: Receiver,
    workdir: Path,
    heartbeat: str | None,
    records: int,
) -> float:
    """One kill -9 of the destination worker; seconds until every export completed."""
    unique = uuid.uuid4().hex[:8]
    config = _config(settings, unique, receiver.url, heartbeat)
    path = workdir / f"{unique}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = workdir / f"{unique}.log"
    topic = config["kafka"]["topics"][0]
    query = f"TaskQueue = '{config['temporal']['workflow_task_queue']}'"
    prefix = f"/r/{unique}-"
    await create_topic(settings.kafka_bootstrap, topic, partitions=1)
    procs = [
        _start(["ingest"], path, log),
        _start(["worker", "--workflows"], path, log),
    ]
    victim = _start(["worker", "-d", f"api-{unique}"], path, log)
    try:
        await produce(
            settings.kafka_bootstrap,
            topic,
            [(f"{unique}-{i}".encode(), json.dumps({"n": i}).encode()) for i in range(records)],
        )
        deadline = time.monotonic() + 120
        while len([p for p in receiver.arrivals if p.startswith(prefix)]) < records:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the requests never all arrived; see {log}")
            await asyncio.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        victim.wait()
        procs.append(_start(["worker", "-d", f"api-{unique}"], path, log))
        while (
            await client.count_workflows(f"{query} AND ExecutionStatus = 'Completed'")
        ).count < records:
            if time.monotonic() > killed + 180:
                raise RuntimeError(f"exports did not complete within 180s; see {log}")
            await asyncio.sleep(0.1)
        return time.monotonic() - killed
    finally:
        for proc in procs:
            terminate(proc, None)


async def main(rounds: int, records: int) -> None:
    settings = settings_from_env()
    client = await Client.connect(settings.temporal_address)
    workdir = settings.stack_dir / "bench-recovery"
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    async with Receiver() as receiver:
        receiver.script("/r", delay=ANSWER_DELAY_S)
        for round_ in range(rounds):
            names = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
            for name in names:
                seconds = await trial(client, settings, receiver, workdir, VARIANTS[name], records)
                results[name].append(seconds)
                print(f"round {round_ + 1} {name}: {seconds:.1f}s", flush=True)
    print(
        f"\nkill -9 of a destination worker with {records} exports in flight (REST answering "
        f"after {ANSWER_DELAY_S:.0f}s, attempt timeout {ATTEMPT_TIMEOUT}), {rounds} rounds: "
        "seconds from the kill until every export completed"
    )
    print("| variant | min | median | max |\n|---|---|---|---|")
    for name, values in results.items():
        print(
            f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} | {max(values):.1f} |"
        )


def cli() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs to run (default 3).")
    parser.add_argument("--records", type=int, default=8, help="Exports in flight (default 8).")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.rounds, args.records))


if __name__ == "__main__":
    cli()
