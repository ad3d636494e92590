"""Secrets never leak: a pipeline whose config holds a REST token, DSN passwords and a SASL
password runs as a real ``courier run`` process, with a destination that refuses the token
(401) and one whose password is wrong; its logs (DEBUG, JSON), ``courier status`` and
``config check`` output, its metrics and every workflow history it made hold none of them."""

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
from google.protobuf import json_format
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowExecutionStatus

from courier.rate_control.workflow import destination_state_id
from courier_devtools.receiver import Receiver
from courier_devtools.stack.postgres import secure_dsn
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import eventually, wait_for_workflows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
WAIT_S = 240.0
"""Generous: on a loaded 2-core machine an export can miss its heartbeat and wait for a retry."""

COURIER = str(Path(sys.executable).parent / "courier")
FAST_RETRY = {"initial_interval": "100ms", "maximum_interval": "1s"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def courier(*args: str, env: dict[str, str]) -> str:
    """Run a short courier command; its stdout and stderr together."""
    done = subprocess.run(
        [COURIER, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return done.stdout + done.stderr


async def history_texts(client: Client, workflow_ids: list[str]) -> list[str]:
    """Each history as its raw bytes (latin-1) and as JSON, read without any codec."""
    texts = []
    for wid in workflow_ids:
        events = (await client.get_workflow_handle(wid).fetch_history()).events
        history = History(events=events)
        texts += [history.SerializeToString().decode("latin-1"), json_format.MessageToJson(history)]
    return texts


async def test_no_secret_in_logs_status_metrics_or_histories(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    secrets = {
        "token": f"tok-{unique}-s3cr3t",
        "dsn password": f"pgpw-{unique}-s3cr3t",
        "wrong dsn password": f"pgbad-{unique}-s3cr3t",
        "sasl password": f"sasl-{unique}-s3cr3t",
    }
    topic = f"t-{unique}"
    api, denied, pg, pgbad = (f"{n}-{unique}" for n in ("api", "denied", "pg", "pgbad"))
    metrics_port = free_port()
    log_file = tmp_path / "courier.log"
    async with Receiver() as receiver:
        receiver.script("/denied", then=401)
        bearer = {"Authorization": f"Bearer {secrets['token']}"}
        config = {
            "kafka": {
                "bootstrap_servers": stack_settings.kafka_bootstrap,
                "topics": [topic],
                "group": f"g-{unique}",
                "commit_interval": "200ms",
                # Unused with PLAINTEXT, but in the config all the same.
                "security": {
                    "protocol": "PLAINTEXT",
                    "sasl_mechanism": "SCRAM-SHA-512",
                    "sasl_username": "courier",
                    "sasl_password": secrets["sasl password"],
                },
            },
            "temporal": {
                "address": stack_settings.temporal_address,
                "workflow_task_queue": f"courier-workflows-{unique}",
            },
            "destinations": [
                {
                    "name": api,
                    "kind": "rest",
                    "url": f"{receiver.url}/orders/{{key}}",
                    "headers": bearer,
                    "retry": FAST_RETRY,
                },
                {
                    "name": denied,
                    "kind": "rest",
                    "url": f"{receiver.url}/denied/{{key}}",
                    "headers": bearer,
                    "retry": FAST_RETRY,
                },
                # The password comes from the environment here, as docs/configuration.md advises...
                {"name": pg, "kind": "postgres", "dsn": "${PG_DSN}", "table": f"s_{unique}"},
                # ...and is written into the file here; the server refuses it.
                {
                    "name": pgbad,
                    "kind": "postgres",
                    "dsn": secure_dsn(stack_settings, secrets["wrong dsn password"]),
                    "table": f"s_{unique}",
                },
            ],
            "routes": {
                "rules": [
                    {"prefix": "api-", "destination": api},
                    {"prefix": "denied-", "destination": denied},
                    {"prefix": "bad-", "destination": pgbad},
                ],
                "default": pg,
            },
        }
        config_file = tmp_path / "courier.yaml"
        config_file.write_text(yaml.safe_dump(config))
        good_dsn = stack_settings.postgres_dsn.replace(
            "courier:courier@", f"courier:{secrets['dsn password']}@"
        )
        assert secrets["dsn password"] in good_dsn  # trust auth: any password is accepted
        env = {**os.environ, "PG_DSN": good_dsn, "COURIER_CONFIG": str(config_file)}

        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        records = [
            (f"{prefix}{i}".encode(), json.dumps({"n": i}).encode())
            for prefix in ("api-", "denied-", "pg-", "bad-")
            for i in range(3)
        ]
        await produce(stack_settings.kafka_bootstrap, topic, records)
        with log_file.open("w") as log:
            process = subprocess.Popen(
                [
                    COURIER,
                    "run",
                    "--metrics-port",
                    str(metrics_port),
                    "--log-level",
                    "DEBUG",
                    "--log-format",
                    "json",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        texts: dict[str, str] = {}
        try:
            query = f"CourierTopic = '{topic}'"
            await wait_for_workflows(
                temporal_client, f"{query} AND CourierDestination = '{api}'", 3, timeout=WAIT_S
            )
            await wait_for_workflows(
                temporal_client, f"{query} AND CourierDestination = '{pg}'", 3, timeout=WAIT_S
            )
            await wait_for_workflows(
                temporal_client,
                f"{query} AND CourierDestination = '{denied}'",
                3,
                status=WorkflowExecutionStatus.FAILED,
                timeout=WAIT_S,
            )

            async def status_shows_the_refused_password() -> str | None:
                text = courier("status", env=env)
                return text if f"{pgbad}: not connected" in text else None

            texts["courier status"] = await eventually(
                status_shows_the_refused_password, timeout=WAIT_S, interval=1
            )
            assert "password authentication failed" in texts["courier status"]
            texts["courier config check"] = courier("config", "check", env=env)
            texts["courier deploy k8s"] = courier("deploy", "k8s", env=env)
            assert "becomes a ConfigMap" in texts["courier deploy k8s"]
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"http://127.0.0.1:{metrics_port}/readyz")
                assert ready.status_code == 200, ready.text
                # Courier's metrics and the Temporal SDK's, on the one port.
                answer = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
                texts["metrics"] = answer.text
            assert f'courier_records_exported_total{{destination="{api}"}} 3.0' in texts["metrics"]
            assert "\ntemporal_" in texts["metrics"]
            workflow_ids = [wf.id async for wf in temporal_client.list_workflows(query)]
            workflow_ids += [
                destination_state_id(f"courier-dest-{name}") for name in (api, denied, pg, pgbad)
            ]
            for i, text in enumerate(await history_texts(temporal_client, workflow_ids)):
                texts[f"history {i}"] = text
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 60)
    texts["logs"] = log_file.read_text()

    # The run did meet every secret: the destinations used the token and the passwords.
    assert all(
        r.headers.get("authorization") == f"Bearer {secrets['token']}" for r in receiver.requests
    )
    assert "password authentication failed" in texts["logs"]
    # What is scanned is the real thing: histories with the records, state workflows' reports.
    histories = [t for k, t in texts.items() if k.startswith("history")]
    assert len(histories) == 2 * (len(records) + 4)
    assert any("api-0" in t for t in histories)
    assert any("password authentication failed" in t for t in histories)
    for where, text in texts.items():
        for what, value in secrets.items():
            assert value not in text, f"the {what} is in the {where}"
