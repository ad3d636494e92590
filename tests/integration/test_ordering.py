"""Per-key ordering (``ordering: key``) against the real stack and a slow, random REST receiver.

- 5 keys × 50 updates: each key's updates reach the destination in offset order and one at a
  time, keys run in parallel, the destination's rate limit holds; the same load on an
  unordered destination arrives out of order (so the order check can fail).
- A record that fails for good blocks only its key; ``courier status`` says so; ``courier
  replay`` exports it once fixed, ``courier skip`` lets its key go on without it.
- An export retrying for long while records keep arriving is given up and redone in a new run.
- kill -9 of a destination worker, of ingest and of the workflow worker during a run (real
  ``courier`` processes; no stack service is restarted): order kept, nothing lost.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from courier.config.model import parse_config
from courier.ops.blocked import blocked_keys, key_state
from courier_devtools.topics import create_topic
from tests.faults.ledger import Ledger
from tests.faults.processes import config_data
from tests.integration.harness import (
    beyond_limit,
    busiest_window,
    courier_running,
    eventually,
    statuses,
)
from tests.integration.keyorder import (
    KEYS,
    UPDATES,
    RandomReceiver,
    arrived_by_key,
    courier_cli,
    keys_at_once,
    overlapping,
    produced_by_key,
    rest,
    true,
    updates,
)
from workflows import export_key
from workflows.export_key import RECORD_SIGNAL, ExportKey
from workflows.export_record import EXPORT_ACTIVITY
from workflows.types import (
    Blob,
    DestinationPolicy,
    ExportBatch,
    ExportKeyInput,
    ExportRecordInput,
    ExportResult,
    KafkaRecord,
    OrderedRecord,
    RetrySpec,
)

pytestmark = pytest.mark.integration

RATE_LIMIT = 8.0


async def test_each_key_arrives_in_offset_order_within_the_rate_limit(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    ordered, unordered = f"o-{unique}", f"u-{unique}"
    async with RandomReceiver(max_delay=0.2, unavailable=0.1) as receiver:
        data = config_data(
            stack_settings,
            unique,
            destinations=[
                rest(ordered, f"{receiver.url}/o/{{key}}", ordering="key", rate_limit=RATE_LIMIT),
                rest(unordered, f"{receiver.url}/u/{{key}}"),
            ],
            routes={
                "rules": [
                    {"prefix": "o-", "destination": ordered},
                    {"prefix": "u-", "destination": unordered},
                ]
            },
            kafka={"commit_interval": "200ms"},
        )
        config = parse_config(data, environ={})
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=3)
        ledger = Ledger("ordering")
        sent = await ledger.produce(
            stack_settings.kafka_bootstrap, topic, [*updates("o-"), *updates("u-")]
        )
        expected = produced_by_key(sent)
        total = KEYS * UPDATES

        async def all_exported() -> bool:
            return receiver.effects("/o/") == total and receiver.effects("/u/") == total

        async with courier_running(temporal_client, config):
            await eventually(all_exported, timeout=300, interval=1.0)

        arrived = arrived_by_key(receiver, "/o/")
        for key, offsets in arrived.items():
            assert offsets == expected[key], f"{key} arrived in the order {offsets}"
        assert len(arrived) == KEYS
        assert not overlapping(receiver, "/o/"), "a key had two requests at once"
        # The unordered destination, same load: its keys do arrive out of order.
        shuffled = [
            k for k, offsets in arrived_by_key(receiver, "/u/").items() if offsets != expected[k]
        ]
        assert shuffled, (
            "the unordered destination kept every key's order: the check proves nothing"
        )
        assert receiver.duplicates("/o/") == 0
        # Keys ran in parallel (one key's request went out while another's was answered), and
        # the destination's rate limit held across them.
        assert keys_at_once(receiver, "/o/"), "no two keys' requests were ever in flight at once"
        times = sorted(
            t for path, spans in receiver.spans.items() if path.startswith("/o/") for t, _ in spans
        )
        assert (over := beyond_limit(times, RATE_LIMIT)) is None, over
        assert busiest_window(times) <= 1.5 * RATE_LIMIT + 1
        by_status = await statuses(
            temporal_client, f"WorkflowType = 'ExportKey' AND CourierDestination = '{ordered}'"
        )
        assert set(by_status) <= {"RUNNING", "COMPLETED", "CONTINUED_AS_NEW"}, by_status


BLOCK_UPDATES = 12


async def test_a_failed_record_blocks_only_its_key_until_replayed_or_skipped(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    name = f"b-{unique}"
    async with RandomReceiver(max_delay=0.05, unavailable=0.0) as receiver:
        data = config_data(
            stack_settings,
            unique,
            destinations=[rest(name, f"{receiver.url}/b/{{key}}/{{offset}}/", ordering="key")],
            routes={"default": name},
            kafka={"commit_interval": "200ms"},
        )
        config_path = tmp_path / "courier.yaml"
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        config = parse_config(data, environ={})
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=2)
        records = [
            (f"k{k}".encode(), json.dumps({"update": i}).encode())
            for i in range(BLOCK_UPDATES)
            for k in range(4)
        ]
        sent = await Ledger("blocking").produce(stack_settings.kafka_bootstrap, topic, records)
        expected = produced_by_key(sent)
        fixed, skipped = expected["k1"][3], expected["k3"][5]  # k1's 4th, k3's 6th update
        receiver.script(f"/b/k1/{fixed}/", then=422)
        receiver.script(f"/b/k3/{skipped}/", then=422)

        async def arrived() -> dict[str, list[int]]:
            return arrived_by_key(receiver, "/b/")

        async with courier_running(temporal_client, config):

            async def blocked_and_others_done() -> bool:
                now = await arrived()
                return (
                    len(await blocked_keys(temporal_client, name)) == 2
                    and now.get("k0") == expected["k0"]
                    and now.get("k2") == expected["k2"]
                )

            await eventually(blocked_and_others_done, timeout=180, interval=1.0)
            await asyncio.sleep(2)  # time enough for a blocked key to (wrongly) go on
            now = await arrived()
            assert now["k1"] == expected["k1"][:3], now["k1"]
            assert now["k3"] == expected["k3"][:5], now["k3"]
            assert [p for p in receiver.arrivals if p.startswith("/b/k1/")][-1] == f"/b/k1/{fixed}/"

            code, out = await courier_cli("status", "-c", str(config_path))
            assert code == 0, out
            lines = [line for line in out.splitlines() if "blocked since" in line]
            assert len(lines) == 2, out
            k1_line = next(line for line in lines if "key 'k1'" in line)
            k3_line = next(line for line in lines if "key 'k3'" in line)
            assert f"/{fixed}" in k1_line and "422" in k1_line, k1_line
            assert "courier skip courier/" in k3_line, k3_line
            k3_record = k3_line.rsplit("courier skip ", 1)[1].strip()
            assert k3_record.endswith(f"/{skipped}") and f"/{topic}@" in k3_record, k3_line
            assert f"{name}: ordered by key" in out and "2 blocked" in out, out

            # Replay both: k1's record is fixed and goes through, k3's fails again.
            receiver.script(f"/b/k1/{fixed}/", then=200)
            attempts_k3 = receiver.arrivals.count(f"/b/k3/{skipped}/")
            code, out = await courier_cli("replay", "-c", str(config_path), "-d", name, "--yes")
            assert code == 0, out
            assert "replayed 2 of 2" in out, out

            async def k1_done() -> bool:
                return (await arrived()).get("k1") == expected["k1"]

            await eventually(k1_done, timeout=60)
            await eventually(
                lambda: true(receiver.arrivals.count(f"/b/k3/{skipped}/") > attempts_k3),
                timeout=30,
            )

            async def k3_blocked_again() -> bool:
                found = await blocked_keys(temporal_client, name)
                return [b.state.key for b in found] == ["k3"]

            await eventually(k3_blocked_again, timeout=30, interval=1.0)
            assert (await arrived())["k3"] == expected["k3"][:5]

            # Skip k3's record: the key goes on without it.
            code, out = await courier_cli("skip", k3_record, "-c", str(config_path), "--json")
            assert code == 0, out
            result = json.loads(out.strip().splitlines()[-1])
            assert result["offset"] == skipped and result["key"] == "k3", result
            assert result["waiting"] == BLOCK_UPDATES - 6, result

            async def k3_done() -> bool:
                return (await arrived()).get("k3") == [o for o in expected["k3"] if o != skipped]

            await eventually(k3_done, timeout=60)
            code, out = await courier_cli("skip", k3_record, "-c", str(config_path))
            assert code == 1 and f"no key is blocked at {k3_record}" in out, out
            code, out = await courier_cli("skip", "order-17", "-c", str(config_path))
            assert code == 1 and "neither a record ID" in out, out

        assert receiver.duplicates("/b/") == 0
        assert await blocked_keys(temporal_client, name) == []


async def test_an_export_retrying_for_long_is_given_up_and_the_key_goes_on_in_a_new_run(
    temporal_client: Client, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one export retries (the destination is down), the key's records keep coming.

    Past twice the run's length the export is cancelled and the queue carried into a new run,
    which exports it again; nothing is lost or reordered. The run length is cut to 4 events
    (workflow code run unsandboxed, so the patch holds), and the export activity is a stand-in
    that fails until the destination "comes back".
    """
    monkeypatch.setattr(export_key, "EVENTS_PER_RUN", 4)
    queue, wid = f"courier-key-test-{unique}", f"key-test-{unique}"
    down = True
    delivered: list[int] = []

    @activity.defn(name=EXPORT_ACTIVITY)
    async def export(batch: ExportBatch) -> ExportResult:
        if down:
            raise ApplicationError("503 from the destination", type="RetryableExportError")
        delivered.extend(item.record.offset for item in batch.records)
        return ExportResult(destination=batch.destination, written=len(batch.records), detail="")

    policy = DestinationPolicy(
        name="d",
        task_queue=queue,
        retry=RetrySpec(
            initial_interval_s=0.2,
            backoff_coefficient=1.0,
            maximum_interval_s=0.2,
            maximum_attempts=0,
        ),
        start_to_close_s=10,
    )
    async with Worker(
        temporal_client,
        task_queue=queue,
        workflows=[ExportKey],
        activities=[export],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        for offset in range(10):
            record = KafkaRecord(
                topic="t",
                partition=0,
                offset=offset,
                key=Blob("k"),
                value=Blob(f"{offset}"),
                timestamp_ms=0,
                topic_id="ID",
            )
            await temporal_client.start_workflow(
                ExportKey.run,
                ExportKeyInput(destination="d", key="k"),
                id=wid,
                task_queue=queue,
                start_signal=RECORD_SIGNAL,
                start_signal_args=[OrderedRecord(f"r{offset}", ExportRecordInput(record, policy))],
            )

        async def carried_over() -> bool:
            runs = f"WorkflowId = '{wid}' AND ExecutionStatus = 'ContinuedAsNew'"
            return (await temporal_client.count_workflows(runs)).count >= 1

        await eventually(carried_over, timeout=60)
        assert delivered == []
        down = False

        async def all_delivered() -> bool:
            return len(delivered) >= 10

        await eventually(all_delivered, timeout=60)
        assert delivered == list(range(10))
        state = await key_state(temporal_client, wid)
        assert state.exported == 10 and state.pending == 0, state
        await temporal_client.get_workflow_handle(wid).terminate("test over")
