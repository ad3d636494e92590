"""Per-key ordering survives kill -9 of Courier's own processes (real ``courier`` processes).

5 keys × 50 updates are produced while the run goes on; a destination worker, ingest and the
workflow worker are each killed with SIGKILL mid-run and replaced. No service of the stack is
restarted. Every key's updates must still reach the destination in offset order, each with an
effect, none with two.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from courier.core.ids import key_workflow_id
from courier.ops.blocked import key_state
from courier_devtools.topics import create_topic
from tests.faults.common import wait_until
from tests.faults.ledger import FAULT_ID, Ledger
from tests.faults.processes import Fleet, config_data
from tests.integration.harness import statuses
from tests.integration.keyorder import (
    KEYS,
    UPDATES,
    RandomReceiver,
    arrived_by_key,
    produced_by_key,
    rest,
    updates,
)
from workflows.types import KeyState

pytestmark = pytest.mark.integration

PRODUCE_RATE = 10.0
"""Records/s: production lasts ~25 s, while the processes are killed."""


async def test_key_order_survives_kill_9_of_worker_ingest_and_workflow_worker(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    name, topic = f"k-{unique}", f"t-{unique}"
    bootstrap = stack_settings.kafka_bootstrap
    total = KEYS * UPDATES
    async with RandomReceiver(max_delay=0.3, unavailable=0.1) as receiver:
        fleet = Fleet(tmp_path, temporal_client)
        try:
            data = config_data(
                stack_settings,
                unique,
                destinations=[rest(name, f"{receiver.url}/k/{{key}}", ordering="key")],
                routes={"default": name},
                # Commit seldom: the killed ingest leaves every record it handed off to be
                # read again.
                kafka={"commit_interval": "120s"},
            )
            config = fleet.write_config(data)
            await create_topic(bootstrap, topic, partitions=3)
            ingest, workflows, worker = await asyncio.gather(
                fleet.ingest(config), fleet.workflows(config), fleet.worker(config, name)
            )
            ledger = Ledger("order-kill")
            producing = asyncio.create_task(
                ledger.produce(bootstrap, topic, updates(""), per_second=PRODUCE_RATE)
            )

            def effects_reach(n: int) -> Any:
                async def check() -> bool:
                    return receiver.effects("/k/") >= n

                return check

            await wait_until(
                effects_reach(20), timeout=120, what="20 effects", explain=fleet.explain()
            )
            ingest.kill()
            assert await ingest.wait() == -signal.SIGKILL
            await fleet.ingest(config, role="ingest-again")

            await wait_until(
                effects_reach(60), timeout=120, what="60 effects", explain=fleet.explain()
            )
            worker.kill()
            await fleet.worker(config, name, role="replacement", wait=False)
            assert await worker.wait() == -signal.SIGKILL

            await wait_until(
                effects_reach(total * 3 // 5),
                timeout=180,
                what=f"{total * 3 // 5} effects",
                explain=fleet.explain(),
            )
            workflows.kill()
            assert await workflows.wait() == -signal.SIGKILL
            await fleet.workflows(config)

            sent = await producing
            await wait_until(
                effects_reach(total), timeout=300, what="every effect", explain=fleet.explain()
            )
            # The keys' workflows (idle, still running) as the last workflow worker sees them.
            states: list[KeyState] = []

            async def all_acknowledged() -> bool:
                states[:] = [
                    await key_state(
                        temporal_client,
                        key_workflow_id(
                            group=f"g-{unique}", destination=name, key=f"k{k}".encode()
                        ),
                    )
                    for k in range(KEYS)
                ]
                return sum(state.exported for state in states) == total

            await wait_until(all_acknowledged, timeout=30, what="every export acknowledged")
        finally:
            await fleet.close()

        expected = produced_by_key(sent)
        arrived = arrived_by_key(receiver, "/k/")
        assert set(arrived) == set(expected)
        for key, offsets in arrived.items():
            assert offsets == expected[key], f"{key} arrived in the order {offsets}"
        fault_ids = Counter(
            header["value"]
            for request in receiver.effect_requests("/k/")
            for header in json.loads(request.body)["headers"]
            if header["name"] == FAULT_ID
        )
        assert len(fault_ids) == total and set(fault_ids.values()) == {1}, fault_ids
        by_status = await statuses(
            temporal_client, f"WorkflowType = 'ExportKey' AND CourierDestination = '{name}'"
        )
        assert "FAILED" not in by_status and "TERMINATED" not in by_status, by_status
        # The new ingest read again the records the killed one had handed off (nothing was
        # committed); the keys' workflows dropped them as repeats.
        assert sum(state.repeats for state in states) >= 20, states
        assert not any(state.pending or state.blocked for state in states), states
