"""A topic deleted and created again under the same name while ingest runs."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from temporalio.client import Client

from courier_devtools.topics import create_topic, recreate_topic, topic_id
from tests.faults.common import (
    assert_clean,
    fill,
    json_records,
    wait_exported,
    wait_workflows_closed,
)
from tests.faults.ledger import FaultReceiver, Ledger, RestSink, tally
from tests.faults.processes import Fleet, config_data
from tests.faults.report import Row

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OLD_RECORDS = 100
NEW_RECORDS = 200


async def test_topic_recreated_while_ingest_runs(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    fleet: Fleet,
    receiver: FaultReceiver,
    fault_row: Row,
) -> None:
    """Delete the topic and create it again (offsets restart at 0), produce into it at once.

    The new topic's records are new records (new topic ID): every one must be exported, under
    the new ID, and none of the old ones again. Recovery: from the re-creation until every
    record of the new topic is exported.
    """
    name, topic = f"api-{unique}", f"t-{unique}"
    bootstrap = stack_settings.kafka_bootstrap
    data = config_data(
        stack_settings,
        unique,
        destinations=[{"name": name, "kind": "rest", "url": f"{receiver.url}/t"}],
        routes={"default": name},
        kafka={"metadata_refresh": "1s"},
    )
    config = fleet.write_config(data)
    await create_topic(bootstrap, topic, partitions=3)
    old_id = await topic_id(bootstrap, topic)
    ingest, *_ = await asyncio.gather(
        fleet.ingest(config), fleet.workflows(config), fleet.worker(config, name)
    )
    ledger = Ledger("topic-recreate")
    sink = RestSink(receiver, "/t", ledger)
    await ledger.produce(bootstrap, topic, json_records(OLD_RECORDS, "old-"), group="old")
    await wait_exported(sink, ledger, fleet, timeout=90)

    await recreate_topic(bootstrap, topic, partitions=3)
    recreated_at = time.monotonic()
    await ledger.produce(bootstrap, topic, json_records(NEW_RECORDS, "new-"), group="new")
    done_at = await wait_exported(sink, ledger, fleet, timeout=120, fids=ledger.ids("new"))
    new_id = await topic_id(bootstrap, topic)
    by_status = await wait_workflows_closed(temporal_client, topic, len(ledger), timeout=60)
    counted = await tally(sink, ledger)
    new_ids = ledger.ids("new")
    ids_of_new = {
        json.loads(r.body)["topic_id"]
        for r, d in zip(receiver.requests, await sink.deliveries(), strict=True)
        if d.effect and d.fid in new_ids
    }
    warned = "was deleted and created again" in ingest.log()
    fill(
        fault_row,
        "topic-recreate",
        counted,
        recovery_s=done_at - recreated_at,
        notes=f"{OLD_RECORDS} records before, {NEW_RECORDS} after the re-creation; recovery = "
        "re-created → all of the new topic's records exported",
        workflows=by_status,
    )

    assert_clean(counted, fleet)
    assert by_status == {"COMPLETED": len(ledger)}, f"one workflow per record: {by_status}"
    assert new_id != old_id
    assert ids_of_new == {new_id}, f"new records exported under topic IDs {ids_of_new}"
    assert warned, f"no warning about the re-created topic:\n{ingest.tail()}"
