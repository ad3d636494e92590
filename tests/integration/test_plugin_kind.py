"""A destination kind from a plugin package, installed and run end to end.

The example plugin (tests/plugins/courier_example_sink, ``kind: json-files``) is built and
installed with pip into a temporary directory (from a copy: the build leaves nothing in the
tree), and every ``courier`` command below runs as a process with that directory on its
``PYTHONPATH``, where its ``courier.destinations`` entry point is found. Nothing in Courier names
the kind: the config check, the reference, ``courier map``, ``courier deploy k8s`` and
``courier run`` (ingest and the kind's worker) find it through the registry.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client, WorkflowExecutionStatus

from courier_devtools.stack import StackSettings
from courier_devtools.topics import create_topic, produce, topic_id
from tests.integration.harness import eventually, wait_for_workflows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

EXAMPLE_SINK = Path(__file__).parents[1] / "plugins" / "courier_example_sink"
COURIER = str(Path(sys.executable).parent / "courier")
WAIT_S = 240.0
"""Generous: on a loaded 2-core machine an export can miss its heartbeat and wait for a retry."""
ENTRY_POINT = "json-files = courier_example_sink:JsonFilesConfig"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the installed example plugin (package and its dist-info)."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "source"
    shutil.copytree(
        EXAMPLE_SINK,
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    site = work / "site"
    # --no-build-isolation: setuptools from the dev extra builds it, offline.
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    pip += ["--no-build-isolation", "--no-index", "--target", str(site), str(source)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "courier_example_sink-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site


def environment(site: Path | None) -> dict[str, str]:
    """This process's environment, with the plugin on the path when ``site`` is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURIER_")}
    env["COLUMNS"] = "200"  # tables unabridged
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(site)]))
    return env


def courier(*args: str, site: Path | None) -> subprocess.CompletedProcess[str]:
    """Run a short courier command."""
    return subprocess.run(
        [COURIER, *args],
        env=environment(site),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_config(
    path: Path, stack: StackSettings, unique: str, directory: Path, **fields: Any
) -> str:
    config = {
        "kafka": {
            "bootstrap_servers": stack.kafka_bootstrap,
            "topics": [f"t-{unique}"],
            "group": f"g-{unique}",
            "commit_interval": "200ms",
        },
        "temporal": {
            "address": stack.temporal_address,
            "workflow_task_queue": f"courier-workflows-{unique}",
        },
        "destinations": [
            {"name": f"files-{unique}", "kind": "json-files", "directory": str(directory), **fields}
        ],
        "routes": {"default": f"files-{unique}"},
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


async def test_the_commands_take_the_plugin_kind(
    plugin_site: Path, stack: StackSettings, unique: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "courier.yaml", stack, unique, Path("data/files"))
    name = f"files-{unique}"

    without = courier("config", "check", "-c", config, site=None)
    assert without.returncode == 2
    assert "unknown destination kind 'json-files'; known: 'rest', 'file', 'postgres'" in (
        without.stderr
    )

    check = courier("config", "check", "-c", config, site=plugin_site)
    assert check.returncode == 0, check.stderr
    [row] = [line for line in check.stdout.splitlines() if name in line and "│" in line]
    assert "json-files" in row

    reference = courier("config", "reference", site=plugin_site)
    assert reference.returncode == 0, reference.stderr
    assert "## destinations[] with kind: json-files" in reference.stdout
    assert f"From the plugin courier-example-sink 0.1.0 (entry point `{ENTRY_POINT}`)." in (
        reference.stdout
    )
    assert "| `max_bytes` | int | `1000000` |" in reference.stdout

    record = tmp_path / "record.json"
    record.write_text(json.dumps({"key": "k-1", "value": {"total": 12}}))
    shown = courier("map", "-d", name, "--record", str(record), "-c", config, site=plugin_site)
    assert shown.returncode == 0, shown.stderr
    head, where, content = shown.stdout.splitlines()
    assert head == f"# {name} (json-files) would receive:"
    assert where.startswith("# written to data/files/") and where.endswith(".json")
    body = json.loads(content)
    assert body["key"] == "k-1" and body["value"] == {"total": 12}
    assert body["idempotency_key"] == f"courier/g-{unique}/example@AAAAAAAAAAAAAAAAAAAAAA/0/0"

    k8s = courier("deploy", "k8s", "-c", config, site=plugin_site)
    assert k8s.returncode == 0, k8s.stderr
    manifests = [d for d in yaml.safe_load_all(k8s.stdout) if d]
    claims = [d["metadata"]["name"] for d in manifests if d["kind"] == "PersistentVolumeClaim"]
    assert len(claims) == 1 and claims[0].endswith("-data")
    mounts = [
        mount["mountPath"]
        for d in manifests
        if d["kind"] == "Deployment"
        for container in d["spec"]["template"]["spec"]["containers"]
        for mount in container.get("volumeMounts", [])
        if mount["name"] == "data"
    ]
    assert mounts == ["/app/data/files"]
    assert f"# Note: {name} (kind json-files) runs one pod at most" in k8s.stdout


async def test_courier_run_exports_kafka_records_through_the_plugin_kind(
    plugin_site: Path,
    stack: StackSettings,
    temporal_client: Client,
    unique: str,
    tmp_path: Path,
) -> None:
    topic = f"t-{unique}"
    out = tmp_path / "out"
    fast = {"initial_interval": "100ms", "maximum_interval": "1s"}
    config = write_config(
        tmp_path / "courier.yaml", stack, unique, out, max_bytes=2_000, retry=fast
    )
    await create_topic(stack.kafka_bootstrap, topic, partitions=2)
    records = [(f"k-{i}".encode(), json.dumps({"n": i}).encode()) for i in range(20)]
    too_big = (b"big", json.dumps({"pad": "x" * 5_000}).encode())
    sent = await produce(stack.kafka_bootstrap, topic, [*records, too_big])
    big_at = (sent[-1].partition, sent[-1].offset)
    log = tmp_path / "courier.log"
    with log.open("w") as log_out:
        process = subprocess.Popen(
            [COURIER, "run", "-c", config],
            env=environment(plugin_site),
            stdout=log_out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def all_written() -> list[Path]:
            files = sorted(out.glob("*.json")) if out.is_dir() else []
            return files if len(files) >= len(records) else []

        files = await eventually(all_written, timeout=WAIT_S, interval=0.5)
        await wait_for_workflows(
            temporal_client,
            f"CourierTopic = '{topic}'",
            1,
            status=WorkflowExecutionStatus.FAILED,
            timeout=WAIT_S,
        )
        await wait_for_workflows(
            temporal_client, f"CourierTopic = '{topic}'", len(records), timeout=WAIT_S
        )
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 60)
    assert code == 0, log.read_text()

    written = [json.loads(f.read_text()) for f in files]
    assert len(files) == len(records)  # one file each; none for the record over max_bytes
    assert sorted(w["key"] for w in written) == sorted(k.decode() for k, _ in records)
    assert all(w["value"] == {"n": int(w["key"][2:])} for w in written)
    tid = await topic_id(stack.kafka_bootstrap, topic)
    for w in written:
        assert w["topic"] == topic and w["topic_id"] == tid
        identity = f"courier/g-{unique}/{topic}@{tid}/{w['partition']}/{w['offset']}"
        assert w["idempotency_key"] == identity
        assert (w["partition"], w["offset"]) != big_at
    assert not list(out.glob(".*.tmp"))
    [failed] = [
        wf
        async for wf in temporal_client.list_workflows(
            f"CourierTopic = '{topic}' AND ExecutionStatus = 'Failed'"
        )
    ]
    assert failed.id == f"courier/g-{unique}/{topic}@{tid}/{big_at[0]}/{big_at[1]}"
    assert "over max_bytes 2000" in log.read_text()
