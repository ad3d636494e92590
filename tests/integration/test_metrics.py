"""Metrics scraped over HTTP from a real Courier: a destination's backlog rises while it is down
and drains after; the consumer lag rises while ingest cannot hand off and returns to 0; one port
serves Courier's metrics and the Temporal SDK's."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from courier.core import metrics
from courier_devtools.receiver import Receiver
from courier_devtools.tcp_proxy import tcp_proxy
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import courier_running, eventually, pipeline_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

COURIER = str(Path(sys.executable).parent / "courier")
FAST_RETRY = {"initial_interval": "100ms", "maximum_interval": "1s"}
WAIT_S = 180.0
"""Generous: the collector reads Temporal every 15 s, a loaded machine is slower still."""
RECORDS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def scrape(port: int) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    answer.raise_for_status()
    return answer.text


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` of an exposition (None if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def test_a_destinations_backlog_rises_while_it_is_down_and_drains_after(
    stack_settings: Any, unique: str, tmp_path: Path
) -> None:
    topic, api = f"t-{unique}", f"api-{unique}"
    metrics_port = free_port()
    lag = {"topic": topic, "partition": "0"}
    async with Receiver() as receiver:
        receiver.script("/api", then=503)
        config = {
            "kafka": {
                "bootstrap_servers": stack_settings.kafka_bootstrap,
                "topics": [topic],
                "group": f"g-{unique}",
                "commit_interval": "200ms",
            },
            "temporal": {
                "address": stack_settings.temporal_address,
                "workflow_task_queue": f"courier-workflows-{unique}",
            },
            "destinations": [
                {
                    "name": api,
                    "kind": "rest",
                    "url": f"{receiver.url}/api/{{key}}",
                    "retry": FAST_RETRY,
                }
            ],
            "routes": {"default": api},
        }
        config_file = tmp_path / "courier.yaml"
        config_file.write_text(yaml.safe_dump(config))
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        log_file = tmp_path / "courier.log"
        with log_file.open("w") as log:
            process = subprocess.Popen(
                [COURIER, "run", "--metrics-port", str(metrics_port), "-c", str(config_file)],
                env={**os.environ},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:

            async def first_collected() -> str | None:
                try:
                    text = await scrape(metrics_port)
                except httpx.HTTPError:
                    return None
                # Read once the destination's worker polls (the first read may come before).
                workers = value(text, "courier_destination_workers", destination=api)
                return text if workers == 1 else None

            text = await eventually(first_collected, timeout=WAIT_S, interval=1)
            # One port: Courier's metrics and the Temporal SDK's.
            assert value(text, "courier_build_info", version=metrics.version()) == 1
            assert any(line.startswith("temporal_") for line in text.splitlines()), text[-2000:]
            assert value(text, "courier_destination_backlog_records", destination=api) == 0
            assert value(text, "courier_destination_rate_limit", destination=api) == 0

            await produce(
                stack_settings.kafka_bootstrap,
                topic,
                [(f"k{i}".encode(), json.dumps({"i": i}).encode()) for i in range(RECORDS)],
            )

            async def backlog_grew() -> tuple[float, float] | None:
                text = await scrape(metrics_port)
                backlog = value(text, "courier_destination_backlog_records", destination=api)
                oldest = value(text, "courier_destination_oldest_pending_seconds", destination=api)
                if backlog and oldest:
                    return backlog, oldest
                return None

            backlog, oldest = await eventually(backlog_grew, timeout=WAIT_S, interval=1)
            assert 0 < backlog <= RECORDS and oldest > 0
            text = await scrape(metrics_port)
            # The circuit opened: the queue probes at rate control's override.
            assert value(text, "courier_circuit_open", destination=api) == 1
            assert (
                value(text, "courier_export_attempts_total", destination=api, outcome="retryable")
                or 0
            ) > 0
            # Ingest handed everything off: Kafka is not where these records wait.
            assert value(text, "courier_consumer_lag_records", **lag) == 0

            receiver.script("/api", then=200)  # the destination is back

            async def drained() -> str | None:
                text = await scrape(metrics_port)
                return (
                    text
                    if receiver.effects("/api") == RECORDS
                    and value(text, "courier_destination_backlog_records", destination=api) == 0
                    and value(text, "courier_consumer_lag_records", **lag) == 0
                    else None
                )

            text = await eventually(drained, timeout=WAIT_S, interval=1)
            assert value(text, "courier_destination_oldest_pending_seconds", destination=api) == 0
            assert value(text, "courier_consumer_lag_seconds", **lag) == 0
            assert value(text, "courier_records_exported_total", destination=api) == RECORDS
            assert value(text, "courier_last_commit_timestamp_seconds")
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 60)
    assert process.returncode == 0, log_file.read_text()[-3000:]


async def test_the_consumer_lag_rises_while_ingest_cannot_hand_off_and_returns_to_zero(
    stack_settings: Any, unique: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    metrics.serve(metrics_port, "127.0.0.1")
    host, port = stack_settings.temporal_address.rsplit(":", 1)
    async with tcp_proxy(host, int(port)) as proxy:
        # Ingest reaches Temporal through the proxy only: cutting it stops its hand-offs.
        client = await Client.connect(proxy.address, namespace=stack_settings.temporal_namespace)
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {"name": f"file-{unique}", "kind": "file", "path": str(tmp_path / "out.jsonl")}
            ],
            routes={"default": f"file-{unique}"},
        )
        topic = config.kafka.topics[0]
        lag = {"topic": topic, "partition": "0"}
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        async with courier_running(client, config):

            async def lag_of(records: int) -> tuple[float, float] | None:
                text = await scrape(metrics_port)
                found = value(text, "courier_consumer_lag_records", **lag)
                seconds = value(text, "courier_consumer_lag_seconds", **lag)
                if found == records and seconds is not None:
                    return found, seconds
                return None

            await eventually(lambda: lag_of(0), timeout=WAIT_S, interval=0.5)
            await proxy.cut()
            await produce(
                stack_settings.kafka_bootstrap,
                topic,
                [(f"k{i}".encode(), b"{}") for i in range(RECORDS)],
            )
            _, first = await eventually(lambda: lag_of(RECORDS), timeout=WAIT_S, interval=0.5)

            async def older() -> float | None:
                found = await lag_of(RECORDS)
                return found[1] if found is not None and found[1] > first else None

            # Measured again with no record arriving: the same records, older.
            later = await eventually(older, timeout=WAIT_S, interval=0.5)
            assert later > first > 0

            await proxy.restore()
            _, seconds = await eventually(lambda: lag_of(0), timeout=WAIT_S, interval=0.5)
            assert seconds == 0
    # Ingest stopped: its partitions' series are gone.
    text = await scrape(metrics_port)
    assert value(text, "courier_consumer_lag_records", **lag) is None
