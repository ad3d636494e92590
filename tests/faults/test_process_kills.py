"""Courier's own processes killed with SIGKILL: a destination worker, ingest, one of two ingests."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from typing import Any

import pytest
from temporalio.client import Client

from activities.base import TimeoutConfig
from courier.config.model import parse_config
from courier_devtools.topics import create_topic
from tests.faults.common import (
    assert_clean,
    fill,
    flowing_again,
    json_records,
    wait_exported,
    wait_until,
    wait_workflows_closed,
    workflow_counts,
)
from tests.faults.ledger import SENDER_HEADER, FaultReceiver, Ledger, RestSink, tally
from tests.faults.processes import Fleet, config_data
from tests.faults.report import Row

pytestmark = [pytest.mark.integration, pytest.mark.faults]


WORKER_KILL_RECORDS = 240
SLOW_ANSWER_S = 0.5
"""The receiver answers each request after this long, so exports are in flight at any time."""
CONCURRENCY = 8


@pytest.mark.parametrize("heartbeats", ["on", "off"])
async def test_worker_killed_mid_export(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    fleet: Fleet,
    receiver: FaultReceiver,
    fault_row: Row,
    heartbeats: str,
) -> None:
    """kill -9 a destination worker with exports in flight; a replacement starts at once.

    Recovery is the time from the kill until every export in flight at the kill has been
    completed by the replacement: without heartbeats Temporal retries a lost attempt after the
    attempt timeout, with them after the heartbeat timeout. ``heartbeats``: "on" runs the
    destination's defaults, "off" sets ``timeouts.heartbeat: null``.
    """
    scenario = "worker-kill" if heartbeats == "on" else "worker-kill-no-heartbeat"
    if heartbeats == "off" and "heartbeat" not in TimeoutConfig.model_fields:
        pytest.skip("this Courier has no timeouts.heartbeat setting")
    name, topic = f"api-{unique}", f"t-{unique}"
    bootstrap = stack_settings.kafka_bootstrap
    receiver.script("/w", delay=SLOW_ANSWER_S)

    def worker_config(sender: str) -> dict[str, Any]:
        """The config, its requests naming the worker that sends them."""
        return config_data(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/w",
                    "max_concurrency": CONCURRENCY,
                    "headers": {SENDER_HEADER: sender},
                    **({"timeouts": {"heartbeat": None}} if heartbeats == "off" else {}),
                }
            ],
            routes={"default": name},
        )

    data = worker_config("first")
    config = fleet.write_config(data)
    replacement_config = fleet.write_config(worker_config("replacement"), "replacement.yaml")
    timeouts = parse_config(data, environ={}).destination(name).timeouts
    attempt_s = timeouts.attempt.total_seconds()
    heartbeat = getattr(timeouts, "heartbeat", None)  # the field exists once exports heartbeat
    heartbeat_s = heartbeat.total_seconds() if heartbeat else None
    await create_topic(bootstrap, topic)
    await asyncio.gather(fleet.ingest(config), fleet.workflows(config))
    first = await fleet.worker(config, name)
    ledger = Ledger(scenario)
    sink = RestSink(receiver, "/w", ledger)
    await ledger.produce(bootstrap, topic, json_records(WORKER_KILL_RECORDS))

    # Kill when few records wait behind the ones in flight: a retried attempt queues behind
    # the backlog, and the recovery should measure the timeout, not the backlog.
    async def mid_export() -> bool:
        counted = await tally(sink, ledger)
        return counted.lost <= 2 * CONCURRENCY and len(receiver.in_flight()) >= 2

    await wait_until(mid_export, timeout=120, what="exports under way", explain=fleet.explain())
    at_receiver = receiver.in_flight()
    first.kill()
    killed_at = time.monotonic()
    await fleet.worker(replacement_config, name, role="replacement", wait=False)
    assert await first.wait() == -signal.SIGKILL

    done_at = await wait_exported(sink, ledger, fleet, timeout=attempt_s + 120)
    # A request in flight at the kill may have had its effect (the receiver answered it after
    # the kill); the export is done when the replacement's attempt is: its workflow completed.
    by_status = await wait_workflows_closed(
        temporal_client, topic, WORKER_KILL_RECORDS, timeout=attempt_s + 120
    )
    deliveries = await sink.deliveries()
    # In flight at the kill: requests the receiver was answering, and attempts it had answered
    # whose completion the worker had not reported yet (they come again, as repeats). A request
    # the first worker sent just before the kill can reach the receiver after it: which worker
    # sent a request is its X-Courier-Sender header, not its arrival time.
    repeated = {d.idempotency_key for d in deliveries if d.repeated and d.idempotency_key}
    in_flight = at_receiver | repeated
    first_sender: dict[str | None, str | None] = {}
    for d in deliveries:
        first_sender.setdefault(d.idempotency_key, d.sender)
    recovered: dict[str, float] = {}
    for d in deliveries:
        key = d.idempotency_key
        if key in in_flight and key and d.sender == "replacement" and (d.effect or d.repeated):
            recovered[key] = min(recovered.get(key, d.answered), d.answered)
    recovery_s = max(recovered.values()) - killed_at if recovered else None
    counted = await tally(sink, ledger)
    limit_s = heartbeat_s or attempt_s
    fill(
        fault_row,
        scenario,
        counted,
        recovery_s=recovery_s,
        notes=(
            f"{len(in_flight)} exports in flight at the kill ({len(at_receiver)} being answered, "
            f"{len(in_flight - at_receiver)} answered but not acknowledged); recovery = kill → "
            f"those completed by the replacement; attempt timeout {attempt_s:g} s, heartbeat "
            f"{f'{heartbeat_s:g} s' if heartbeat_s else 'none'}"
        ),
        in_flight=len(in_flight),
        at_receiver=len(at_receiver),
        attempt_timeout_s=attempt_s,
        heartbeat_timeout_s=heartbeat_s,
        all_effects_after_kill_s=round(done_at - killed_at, 1),
    )

    assert_clean(counted, fleet)
    late = {k for k in repeated if first_sender[k] == "replacement"}
    assert not late, f"repeats of records the replacement sent first: {late}"
    assert len(recovered) == len(in_flight), (
        "records in flight at the kill, never answered after it (times from the kill): "
        + "; ".join(
            f"{key}: "
            + ", ".join(
                f"{d.sender} arrived {d.arrived - killed_at:+.2f} "
                f"answered {d.answered - killed_at:+.2f} "
                f"{'effect' if d.effect else 'repeat' if d.repeated else 'no effect'}"
                for d in deliveries
                if d.idempotency_key == key
            )
            for key in sorted(in_flight - set(recovered))
        )
    )
    assert recovery_s is not None and recovery_s <= limit_s + 20, (
        f"in-flight records took {recovery_s:.1f}s after the kill, timeout {limit_s:g}s"
    )
    assert by_status == {"COMPLETED": WORKER_KILL_RECORDS}, by_status


PRODUCE_RATE = 25.0
AFTER_KILL = 150
"""Records produced after the kill (production goes on meanwhile)."""


async def test_ingest_killed_while_producing(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    fleet: Fleet,
    receiver: FaultReceiver,
    fault_row: Row,
) -> None:
    """kill -9 ingest while records arrive; a new ingest reads the uncommitted ones again.

    Recovery: from the kill until every partition exports again (its first record produced
    after the kill is exported): the new ingest's start, group join and hand-off.
    """
    name, topic = f"api-{unique}", f"t-{unique}"
    bootstrap = stack_settings.kafka_bootstrap
    data = config_data(
        stack_settings,
        unique,
        destinations=[{"name": name, "kind": "rest", "url": f"{receiver.url}/i"}],
        routes={"default": name},
    )
    config = fleet.write_config(data)
    await create_topic(bootstrap, topic)
    first, *_ = await asyncio.gather(
        fleet.ingest(config), fleet.workflows(config), fleet.worker(config, name)
    )
    ledger = Ledger("ingest-kill")
    sink = RestSink(receiver, "/i", ledger)
    stop = asyncio.Event()
    producing = asyncio.create_task(
        ledger.produce_until(bootstrap, topic, stop, per_second=PRODUCE_RATE)
    )
    try:

        async def handing_off() -> bool:
            return sum((await workflow_counts(temporal_client, topic)).values()) >= 80

        await wait_until(
            handing_off, timeout=60, what="80 records handed off", explain=fleet.explain()
        )
        first.kill()
        killed_at, killed_wall = time.monotonic(), time.time()
        before_kill = len(ledger)
        await fleet.ingest(config, role="ingest-again")
        assert await first.wait() == -signal.SIGKILL

        async def produced_after() -> bool:
            return len(ledger) >= before_kill + AFTER_KILL

        await wait_until(produced_after, timeout=60, what="records produced after the kill")
    finally:
        stop.set()
        await producing
    await wait_exported(sink, ledger, fleet, timeout=120)
    counted = await tally(sink, ledger)
    by_status = await wait_workflows_closed(temporal_client, topic, len(ledger), timeout=60)
    recovery_s, per_partition = await flowing_again(
        temporal_client, sink, ledger, killed_at, killed_wall
    )
    fill(
        fault_row,
        "ingest-kill",
        counted,
        recovery_s=recovery_s,
        notes=f"produced at {PRODUCE_RATE:g}/s; killed after {before_kill} were produced; "
        "recovery = kill → every partition exports again (hand-off again after "
        f"{max(h for h, _ in per_partition.values()):.1f} s)",
        workflows=by_status,
        handoff_and_export_s_per_partition=per_partition,
    )

    assert_clean(counted, fleet)
    assert by_status == {"COMPLETED": len(ledger)}, f"one workflow per record: {by_status}"


async def test_rebalance_second_ingest_then_first_killed(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    fleet: Fleet,
    receiver: FaultReceiver,
    fault_row: Row,
) -> None:
    """Two ingests in one group: the second joins while records arrive, then the first dies.

    The group takes the dead member's partitions away after its session timeout and gives
    them to the survivor, which reads their uncommitted records again. Recovery: from the kill
    until every partition exports again (its first record produced after the kill is
    exported), which includes the group's session timeout.
    """
    name, topic = f"api-{unique}", f"t-{unique}"
    bootstrap = stack_settings.kafka_bootstrap
    data = config_data(
        stack_settings,
        unique,
        destinations=[{"name": name, "kind": "rest", "url": f"{receiver.url}/r"}],
        routes={"default": name},
    )
    config = fleet.write_config(data)
    await create_topic(bootstrap, topic, partitions=3)
    first, *_ = await asyncio.gather(
        fleet.ingest(config), fleet.workflows(config), fleet.worker(config, name)
    )
    ledger = Ledger("rebalance")
    sink = RestSink(receiver, "/r", ledger)
    stop = asyncio.Event()
    producing = asyncio.create_task(ledger.produce_until(bootstrap, topic, stop, per_second=15.0))
    try:

        async def handing_off() -> bool:
            return sum((await workflow_counts(temporal_client, topic)).values()) >= 40

        await wait_until(
            handing_off, timeout=60, what="40 records handed off", explain=fleet.explain()
        )
        second = await fleet.ingest(config, role="ingest-second")

        async def shared() -> bool:
            return bool(_assignments(second.log())) and bool(_assignments(first.log())[1:])

        await wait_until(
            shared, timeout=60, what="both ingests own partitions", explain=fleet.explain()
        )
        shared_assignment = _assignments(second.log())[-1]
        first.kill()
        killed_at, killed_wall = time.monotonic(), time.time()
        before_kill = len(ledger)
        assert await first.wait() == -signal.SIGKILL

        async def taken_over() -> bool:
            return len(_assignments(second.log())[-1]) == 3 and len(ledger) >= before_kill + 60

        await wait_until(
            taken_over,
            timeout=90,
            what="the survivor owns every partition",
            explain=fleet.explain(),
        )
    finally:
        stop.set()
        await producing
    await wait_exported(sink, ledger, fleet, timeout=120)
    counted = await tally(sink, ledger)
    by_status = await wait_workflows_closed(temporal_client, topic, len(ledger), timeout=60)
    final_assignment = _assignments(second.log())[-1]
    recovery_s, per_partition = await flowing_again(
        temporal_client, sink, ledger, killed_at, killed_wall
    )
    fill(
        fault_row,
        "rebalance",
        counted,
        recovery_s=recovery_s,
        notes=f"second ingest got {len(shared_assignment)} of 3 partitions, then all "
        f"{len(final_assignment)}; recovery = kill → every partition exports again (hand-off "
        f"again after {max(h for h, _ in per_partition.values()):.1f} s, after the group's "
        "session timeout)",
        workflows=by_status,
        handoff_and_export_s_per_partition=per_partition,
    )

    assert_clean(counted, fleet)
    assert by_status == {"COMPLETED": len(ledger)}, f"one workflow per record: {by_status}"
    assert 0 < len(shared_assignment) < 3, shared_assignment
    assert len(final_assignment) == 3, (
        f"the survivor should own every partition: {final_assignment}"
    )


_ASSIGNED = re.compile(r"partitions assigned: \[([^\]]*)\]")


def _assignments(log: str) -> list[list[str]]:
    """Each ``partitions assigned`` line of an ingest log, as its list of partitions."""
    return [
        [p.strip().strip("'") for p in m.group(1).split(",") if p.strip()]
        for m in _ASSIGNED.finditer(log)
    ]
