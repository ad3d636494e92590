"""Encrypted payloads against the real stack: Temporal stores ciphertext, the UI's codec
endpoint (``courier codec-server``, a real process) gives operators the plaintext, and a rotated
key still reads old histories."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.converter import DataConverter

from courier.config.model import CourierConfig, parse_config
from courier.core.codec import ENCODING, KEY_ID
from courier.temporal.client import connect
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import courier_running, eventually, wait_for_workflows
from workflows.types import ExportRecordInput

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
WAIT_S = 240.0
"""Generous: on a loaded 2-core machine an export can miss its heartbeat and wait for a retry."""

UI_ORIGIN = "http://127.0.0.1:8233"
COURIER = str(Path(sys.executable).parent / "courier")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def config_tree(settings: Any, unique: str, out: Path, keys: dict[str, str], current: str) -> Any:
    """The test's config with ``temporal.encryption``; key material from ``${KEY_<id>}``."""
    return {
        "kafka": {
            "bootstrap_servers": settings.kafka_bootstrap,
            "topics": [f"t-{unique}"],
            "group": f"g-{unique}",
            "commit_interval": "200ms",
        },
        "temporal": {
            "address": settings.temporal_address,
            "workflow_task_queue": f"courier-workflows-{unique}",
            "encryption": {
                "current_key": current,
                "keys": [{"id": key_id, "key": f"${{KEY_{key_id}}}"} for key_id in keys],
            },
        },
        "ingest": {"payloads": "inline"},
        "destinations": [{"name": f"file-{unique}", "kind": "file", "path": str(out)}],
        # No default: a key no rule matches fails its workflow with a reason naming the key.
        "routes": {"rules": [{"prefix": "key-", "destination": f"file-{unique}"}]},
    }


def payloads_in(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Every Payload anywhere in a protobuf message (inputs, results, memos, failures …),
    with its field path."""
    if isinstance(message, Payload):
        yield path, message
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        where = f"{path}.{field.name}"
        if isinstance(value, Message):
            yield from payloads_in(value, where)
            continue
        items = value.values() if hasattr(value, "values") else value  # map or repeated
        for item in items:
            if isinstance(item, Message):
                yield from payloads_in(item, where)


INDEX = {
    f".events.{event}.search_attributes.indexed_fields"
    for event in (
        "workflow_execution_started_event_attributes",
        "upsert_workflow_search_attributes_event_attributes",
    )
}
"""Search attributes: the server's index, never encrypted (the test checks they hold no key)."""


PATCH_MARKERS = ".events.marker_recorded_event_attributes.details.payloads"
"""Patch markers (``workflow.patched``): the SDK writes the patch's ID there itself, never through
the codec; the test checks they hold nothing but that."""


def key_ids(history: History) -> set[str]:
    """The key IDs of the history's payloads, once every payload but the index is sealed."""
    found = list(payloads_in(history))
    assert found, "the history has payloads"
    plain = {where for where, p in found if p.metadata["encoding"] != ENCODING}
    assert plain <= INDEX | {PATCH_MARKERS}, f"plain payloads at {plain - INDEX}"
    for where, p in found:
        if where == PATCH_MARKERS and p.metadata["encoding"] != ENCODING:
            assert set(json.loads(p.data)) <= {"id", "deprecated"}, p.data
    return {
        p.metadata[KEY_ID].decode()
        for where, p in found
        if where not in INDEX and p.metadata["encoding"] == ENCODING
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def codec_server(config: Path, env: dict[str, str]) -> AsyncIterator[str]:
    """``courier codec-server`` as its own process; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [COURIER, "codec-server", "-c", str(config), "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        async def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"codec server exited: {process.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                async with httpx.AsyncClient() as http:
                    await http.options(f"{url}/decode")
                return True
            except httpx.TransportError:
                return False

        await eventually(up, timeout=30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


async def ui_decode(url: str, payloads: list[Payload]) -> httpx.Response:
    """The request the Temporal UI sends to its codec endpoint."""
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{url}/decode",
            content=json_format.MessageToJson(Payloads(payloads=payloads)),
            headers={
                "Content-Type": "application/json",
                "X-Namespace": "default",
                "Origin": UI_ORIGIN,
            },
        )


async def histories(client: Client, query: str) -> dict[str, History]:
    return {
        wf.id: History(events=(await client.get_workflow_handle(wf.id).fetch_history()).events)
        async for wf in client.list_workflows(query)
    }


async def run_pipeline(
    settings: Any, config: CourierConfig, records: list[tuple[bytes, bytes]], total: int
) -> None:
    client = await connect(config.temporal)  # Courier's own client: the codec is on
    topic = config.kafka.topics[0]
    await produce(settings.kafka_bootstrap, topic, records)
    async with courier_running(client, config):
        await wait_for_workflows(client, f"CourierTopic = '{topic}'", total, timeout=WAIT_S)
        await wait_for_workflows(
            client,
            f"CourierTopic = '{topic}'",
            1,
            status=WorkflowExecutionStatus.FAILED,
            timeout=WAIT_S,
        )


async def test_history_is_ciphertext_ui_decodes_and_rotated_keys_still_read(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    env = {"KEY_k1": b64(k1), "KEY_k2": b64(k2)}
    out = tmp_path / "out.jsonl"
    first = config_tree(stack_settings, unique, out, {"k1": ""}, "k1")
    config = parse_config(first, environ=env)
    topic = config.kafka.topics[0]
    await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
    secret = f"PLAINTEXT-{unique}"
    records = [
        (f"key-{secret}-{i}".encode(), json.dumps({"card": f"{secret}-{i}"}).encode())
        for i in range(4)
    ]
    unroutable = (f"nowhere-{secret}".encode(), b'{"n": 0}')
    await run_pipeline(stack_settings, config, [*records, unroutable], len(records))

    # The records were exported in the clear...
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["value"]["card"] for line in lines) == [f"{secret}-{i}" for i in range(4)]

    # ...while Temporal holds none of their plaintext, seen without the codec.
    query = f"CourierTopic = '{topic}'"
    old = await histories(temporal_client, query)
    assert len(old) == 5
    for history in old.values():
        raw = history.SerializeToString()
        text = json_format.MessageToJson(history)
        for key, value in [*records, unroutable]:
            for needle in (secret.encode(), key, value, base64.b64encode(value)):
                assert needle not in raw and needle.decode() not in text
        assert key_ids(history) == {"k1"}
    # The failure reason (it names the key) is sealed too, and Courier's client reads it.
    [failed] = [
        wf.id
        async for wf in temporal_client.list_workflows(f"{query} AND ExecutionStatus = 'Failed'")
    ]
    with pytest.raises(WorkflowFailureError) as caught:
        await (await connect(config.temporal)).get_workflow_handle(failed).result()
    assert f"nowhere-{secret}" in str(caught.value.cause)
    described = await temporal_client.get_workflow_handle(next(iter(old))).describe()
    assert "CourierKey" not in described.search_attributes, "keys are record data: not indexed"

    # The UI's decode request gives the operator the record back.
    config_file = tmp_path / "courier.yaml"
    config_file.write_text(yaml.safe_dump(first))
    inputs = {
        wid: list(h.events[0].workflow_execution_started_event_attributes.input.payloads)
        for wid, h in old.items()
    }
    async with codec_server(config_file, env) as url:
        for sealed in inputs.values():
            answer = await ui_decode(url, sealed)
            assert answer.status_code == 200, answer.text
            assert answer.headers["access-control-allow-origin"] == UI_ORIGIN
            opened = json_format.Parse(answer.text, Payloads())
            [record] = await DataConverter.default.decode(
                list(opened.payloads), [ExportRecordInput]
            )
            assert record.record.key is not None and record.record.value is not None
            assert secret in record.record.key.to_bytes().decode()
            assert record.record.value.to_bytes() in {v for _, v in [*records, unroutable]}

    # Rotation: k2 becomes current, k1 stays listed for the retained histories.
    rotated_tree = config_tree(stack_settings, unique, out, {"k1": "", "k2": ""}, "k2")
    rotated = parse_config(rotated_tree, environ=env)
    more = [(f"key-{secret}-{i}".encode(), b'{"n": 1}') for i in range(4, 6)]
    await run_pipeline(stack_settings, rotated, more, len(records) + len(more))
    new = {w: h for w, h in (await histories(temporal_client, query)).items() if w not in old}
    assert len(new) == 2
    for history in new.values():
        assert key_ids(history) == {"k2"}
    rotated_client = await connect(rotated.temporal)
    for wid in set(old) - {failed}:  # the rotated config reads the old results
        await rotated_client.get_workflow_handle(wid).result()
    rotated_file = tmp_path / "rotated.yaml"
    rotated_file.write_text(yaml.safe_dump(rotated_tree))
    async with codec_server(rotated_file, env) as url:
        for sealed in inputs.values():  # written with k1, read by a server whose current is k2
            answer = await ui_decode(url, sealed)
            assert answer.status_code == 200, answer.text

    # Once k1 is dropped, old histories no longer open: the answer says which key is missing.
    dropped_tree = config_tree(stack_settings, unique, out, {"k2": ""}, "k2")
    dropped_file = tmp_path / "dropped.yaml"
    dropped_file.write_text(yaml.safe_dump(dropped_tree))
    async with codec_server(dropped_file, env) as url:
        answer = await ui_decode(url, next(iter(inputs.values())))
        assert answer.status_code == 400 and "'k1'" in answer.text
