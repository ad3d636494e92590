"""Temporal and Kafka stopped and started again under a running Courier.

These stop services of the shared local stack, through its own control code
(``courier_devtools.stack``), so the suite runs them last (``RESTARTS_STACK``); each test starts its
service again whatever happens.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from temporalio.client import Client

from courier_devtools import stack
from courier_devtools.topics import create_topic
from tests.faults.common import (
    assert_clean,
    fill,
    json_records,
    wait_exported,
    wait_until,
    wait_workflows_closed,
)
from tests.faults.ledger import FaultReceiver, Ledger, RestSink, tally
from tests.faults.processes import Fleet, config_data
from tests.faults.report import Row

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RESTARTS_STACK = True

BEFORE = 100
AFTER = 100
TEMPORAL_DOWN_S = 10.0
KAFKA_DOWN_S = 5.0


async def _accepts_connections(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


async def _running(
    settings: Any, unique: str, fleet: Fleet, receiver: FaultReceiver, path: str
) -> str:
    name, topic = f"api-{unique}", f"t-{unique}"
    data = config_data(
        settings,
        unique,
        destinations=[{"name": name, "kind": "rest", "url": f"{receiver.url}{path}"}],
        routes={"default": name},
    )
    config = fleet.write_config(data)
    await create_topic(settings.kafka_bootstrap, topic)
    await asyncio.gather(fleet.ingest(config), fleet.workflows(config), fleet.worker(config, name))
    return topic


async def test_temporal_stopped_and_started_again(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    fleet: Fleet,
    receiver: FaultReceiver,
    fault_row: Row,
) -> None:
    """Temporal goes away for 10 s mid-export while records keep arriving, then comes back.

    Ingest, workflow worker and destination worker keep running; nothing is lost or exported
    twice. Recovery: from Temporal being ready again until every record is exported.
    """
    topic = await _running(stack_settings, unique, fleet, receiver, "/tr")
    bootstrap = stack_settings.kafka_bootstrap
    ledger = Ledger("temporal-restart")
    sink = RestSink(receiver, "/tr", ledger)
    await ledger.produce(bootstrap, topic, json_records(BEFORE, "a"), group="before")

    async def half() -> bool:
        return (await tally(sink, ledger)).exported >= BEFORE // 2

    await wait_until(half, timeout=60, what="exports under way", explain=fleet.explain())
    try:
        await asyncio.to_thread(stack.stop, ["temporal"], settings=stack_settings, echo=None)
        stopped_at = time.monotonic()
        await ledger.produce(bootstrap, topic, json_records(AFTER, "b"), group="during")
        await asyncio.sleep(max(0.0, TEMPORAL_DOWN_S - (time.monotonic() - stopped_at)))
        was_down = not await _accepts_connections(stack_settings.host, stack_settings.temporal_port)
    finally:
        await stack.start_async(["temporal"], settings=stack_settings)
    back_at = time.monotonic()
    done_at = await wait_exported(sink, ledger, fleet, timeout=180)
    by_status = await wait_workflows_closed(temporal_client, topic, len(ledger), timeout=60)
    counted = await tally(sink, ledger)
    fill(
        fault_row,
        "temporal-restart",
        counted,
        recovery_s=done_at - back_at,
        notes=f"down {back_at - stopped_at:.0f} s (stop to ready), {AFTER} records produced "
        "meanwhile; recovery = Temporal ready → all exported",
        down_s=round(back_at - stopped_at, 1),
    )

    assert was_down, "Temporal was up again during the outage (another session started it?)"
    assert_clean(counted, fleet)
    assert by_status == {"COMPLETED": len(ledger)}, f"one workflow per record: {by_status}"
    assert all(p.alive for p in fleet.processes), fleet.tails()


async def test_kafka_stopped_and_started_again(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    fleet: Fleet,
    receiver: FaultReceiver,
    fault_row: Row,
) -> None:
    """Kafka goes away mid-export (ingest loses its broker and its group), then comes back.

    Records produced before and after; none lost or exported twice, ingest keeps running.
    Recovery: from Kafka being ready again until every record is exported.
    """
    topic = await _running(stack_settings, unique, fleet, receiver, "/kr")
    bootstrap = stack_settings.kafka_bootstrap
    ledger = Ledger("kafka-restart")
    sink = RestSink(receiver, "/kr", ledger)
    await ledger.produce(bootstrap, topic, json_records(BEFORE, "a"), group="before")

    async def half() -> bool:
        return (await tally(sink, ledger)).exported >= BEFORE // 2

    await wait_until(half, timeout=60, what="exports under way", explain=fleet.explain())
    try:
        await asyncio.to_thread(stack.stop, ["kafka"], settings=stack_settings, echo=None)
        stopped_at = time.monotonic()
        await asyncio.sleep(max(0.0, KAFKA_DOWN_S - (time.monotonic() - stopped_at)))
        was_down = not await _accepts_connections(stack_settings.host, stack_settings.kafka_port)
    finally:
        await stack.start_async(["kafka"], settings=stack_settings)
    back_at = time.monotonic()
    await ledger.produce(bootstrap, topic, json_records(AFTER, "b"), group="after")
    done_at = await wait_exported(sink, ledger, fleet, timeout=180)
    by_status = await wait_workflows_closed(temporal_client, topic, len(ledger), timeout=60)
    counted = await tally(sink, ledger)
    fill(
        fault_row,
        "kafka-restart",
        counted,
        recovery_s=done_at - back_at,
        notes=f"down {back_at - stopped_at:.0f} s (stop to ready); {AFTER} records produced once "
        "it was back; recovery = Kafka ready → all exported",
        down_s=round(back_at - stopped_at, 1),
    )

    assert was_down, "Kafka was up again during the outage (another session started it?)"
    assert_clean(counted, fleet)
    assert by_status == {"COMPLETED": len(ledger)}, f"one workflow per record: {by_status}"
    assert all(p.alive for p in fleet.processes), fleet.tails()
