"""From a destination coming back to all of its failed records replayed.

``python -m benchmarks.replay_time [--rounds 3] [--records 200]`` on the running local stack.
Each round runs ``courier run`` (ingest, workflow and destination workers in one process)
against a REST destination (this process's recording receiver) that answers 401 — a permanent
failure under the default retry policy, as after a partner's credential rotation — until every
record's workflow has Failed. Then the destination comes back (answers 200) and the clock
starts; the operator's commands run as processes: ``courier failures -d NAME`` (what failed
and why), then ``courier replay -d NAME --yes``. The clock stops when every record has had
its effect at the destination. Reported: min/median/max over the rounds of the whole span,
and of its parts (the failures command, the replay command).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
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


def _config(settings: Any, unique: str, url: str) -> dict[str, Any]:
    return {
        "kafka": {
            "bootstrap_servers": settings.kafka_bootstrap,
            "topics": [f"replay-{unique}"],
            "group": f"replay-{unique}",
            "commit_interval": "200ms",
        },
        "temporal": {
            "address": settings.temporal_address,
            "workflow_task_queue": f"replay-workflows-{unique}",
        },
        "destinations": [
            {"name": f"api-{unique}", "kind": "rest", "url": f"{url}/r/{unique}/{{key}}"}
        ],
        "routes": {"default": f"api-{unique}"},
    }


async def _command(*args: str) -> float:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        COURIER,
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"courier {' '.join(args)} failed: {err.decode()}")
    return time.monotonic() - started


async def trial(
    client: Client, settings: Any, receiver: Receiver, workdir: Path, records: int
) -> dict[str, float]:
    """One outage and recovery; seconds of the whole span and its parts."""
    unique = uuid.uuid4().hex[:8]
    config = _config(settings, unique, receiver.url)
    path = workdir / f"{unique}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = workdir / f"{unique}.log"
    topic = config["kafka"]["topics"][0]
    name = config["destinations"][0]["name"]
    query = f"TaskQueue = '{config['temporal']['workflow_task_queue']}'"
    prefix = f"/r/{unique}/"
    receiver.script(prefix, then=401)
    await create_topic(settings.kafka_bootstrap, topic, partitions=3)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [COURIER, "run", "-c", str(path)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        await produce(
            settings.kafka_bootstrap,
            topic,
            [(f"k-{i}".encode(), json.dumps({"n": i}).encode()) for i in range(records)],
        )
        deadline = time.monotonic() + 300
        failed = f"{query} AND ExecutionStatus = 'Failed'"
        while (await client.count_workflows(failed)).count < records:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the records never all failed; see {log}")
            await asyncio.sleep(0.2)
        receiver.script(prefix, then=200)  # the destination is back
        back = time.monotonic()
        failures_s = await _command("failures", "-d", name, "-c", str(path))
        replay_s = await _command("replay", "-d", name, "--yes", "-c", str(path))
        while receiver.effects(prefix) < records:
            if time.monotonic() > back + 600:
                raise RuntimeError(f"replayed records did not all arrive; see {log}")
            await asyncio.sleep(0.05)
        return {
            "total": time.monotonic() - back,
            "failures command": failures_s,
            "replay command": replay_s,
        }
    finally:
        terminate(proc, None)


async def main(rounds: int, records: int) -> None:
    settings = settings_from_env()
    client = await Client.connect(settings.temporal_address)
    workdir = Path(tempfile.mkdtemp(prefix="courier-bench-replay-"))
    results: dict[str, list[float]] = {}
    async with Receiver() as receiver:
        for round_ in range(rounds):
            spans = await trial(client, settings, receiver, workdir, records)
            for key, value in spans.items():
                results.setdefault(key, []).append(value)
            shown = ", ".join(f"{k} {v:.1f}s" for k, v in spans.items())
            print(f"round {round_ + 1}: {shown}", flush=True)
    print(f"\n{records} failed records, destination back → all replayed, {rounds} rounds (s)")
    print("| span | min | median | max |\n|---|---|---|---|")
    for key, values in results.items():
        print(
            f"| {key} | {min(values):.1f} | {statistics.median(values):.1f} | {max(values):.1f} |"
        )


def cli() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="Rounds to run (default 3).")
    parser.add_argument("--records", type=int, default=200, help="Failed records per round.")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.records))


if __name__ == "__main__":
    cli()
