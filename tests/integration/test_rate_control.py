"""Rate control against the real stack: a failing destination's circuit opens and closes, and
429 answers lower a destination's rate cluster-wide (through its queue's rate limit)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete
from temporalio.client import Client, WorkflowExecutionStatus

from courier.core.task_queues import describe
from courier.ops.status import destination_statuses
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import (
    courier_running,
    eventually,
    pipeline_config,
    wait_for_workflows,
)

pytestmark = pytest.mark.integration

FAST_RETRY = {"initial_interval": "100ms", "maximum_interval": "1s"}


async def test_a_failing_destination_stops_spending_attempts_until_a_probe_succeeds(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    down, healthy = f"down-{unique}", f"ok-{unique}"
    async with Receiver() as receiver:
        receiver.script("/down", then=503)
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": down,
                    "kind": "rest",
                    "url": f"{receiver.url}/down/{{key}}",
                    "retry": FAST_RETRY,
                },
                {"name": healthy, "kind": "rest", "url": f"{receiver.url}/ok/{{key}}"},
            ],
            routes={"rules": [{"prefix": "down-", "destination": down}], "default": healthy},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic)
        records = [
            (f"{kind}-{i}".encode(), json.dumps({"i": i}).encode())
            for kind in ("down", "ok")
            for i in range(30)
        ]
        async with courier_running(temporal_client, config):
            await produce(stack_settings.kafka_bootstrap, topic, records)

            async def circuit_open() -> str | None:
                statuses = {s.name: s for s in await destination_statuses(temporal_client, config)}
                line = statuses[down].rate_control
                return line if line.startswith("circuit open since") else None

            line = await eventually(circuit_open, timeout=60)
            assert "probing every 5s; last error: POST" in line and "503" in line, line
            queue = await describe(temporal_client, f"courier-dest-{down}")
            assert queue.rate_limit == pytest.approx(0.2) and queue.rate_limit_source == "override"
            # The healthy destination is untouched; the failing one is only probed.
            await wait_for_workflows(temporal_client, f"CourierDestination = '{healthy}'", 30)
            before = len([r for r in receiver.requests if r.path.startswith("/down")])
            began = time.monotonic()
            await asyncio.sleep(5)  # attempts without the circuit: dozens a second
            probes = len([r for r in receiver.requests if r.path.startswith("/down")]) - before
            # Counted over the time that really passed (a busy machine sleeps longer): one
            # probe per 5 s, plus the limiter's burst and a probe in flight at either end.
            waited = time.monotonic() - began
            assert probes <= waited / 5 + 4, f"{probes} attempts in {waited:.1f}s, probe every 5s"

            receiver.script("/down", then=200)
            await wait_for_workflows(
                temporal_client, f"CourierDestination = '{down}'", 30, timeout=120
            )

            async def closed() -> bool:
                statuses = {s.name: s for s in await destination_statuses(temporal_client, config)}
                queue = await describe(temporal_client, f"courier-dest-{down}")
                return statuses[down].rate_control == "normal" and queue.rate_limit is None

            await eventually(closed)
    assert receiver.effects("/down") == 30 and receiver.effects("/ok") == 30


async def test_429_answers_lower_the_rate_of_every_worker(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    name = f"busy-{unique}"
    async with Receiver() as receiver:
        receiver.script("/busy", first=[429] * 10, then=200)
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/busy/{{key}}",
                    "rate_limit": 20,
                    "retry": FAST_RETRY,
                }
            ],
            routes={"default": name},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic)
        async with courier_running(temporal_client, config):
            await produce(
                stack_settings.kafka_bootstrap,
                topic,
                [(f"k{i}".encode(), b"{}") for i in range(200)],
            )

            async def lowered() -> float | None:
                queue = await describe(temporal_client, f"courier-dest-{name}")
                rate = queue.rate_limit
                lowered = queue.rate_limit_source == "override" and rate is not None and rate < 20
                return rate if lowered else None

            rate = await eventually(lowered, timeout=60)
            assert rate <= 10, rate
            statuses = {s.name: s for s in await destination_statuses(temporal_client, config)}
            assert statuses[name].rate_control.startswith("adaptive rate"), statuses[name]
            await wait_for_workflows(temporal_client, f"CourierDestination = '{name}'", 200)
    assert receiver.effects("/busy") == 200
    assert receiver.duplicates("/busy") == 0


async def test_a_worker_restarted_during_an_open_circuit_closes_it_on_an_answered_probe(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    """As in a deploy: the circuit is open, the worker restarts, the endpoint has recovered.

    The new worker's first answered probes must reach the controller (which alone knows the
    circuit is open): the circuit closes and the queue gets its full rate back.
    """
    name = f"flaky-{unique}"
    async with Receiver() as receiver:
        receiver.script("/flaky", then=503)
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/flaky/{{key}}",
                    "retry": FAST_RETRY,
                    # Probes well inside the receiver's keep-alive (5 s): a probe on a
                    # connection it closed fails, and a failure seen would close it anyway.
                    "rate_control": {"probe_interval": "2s"},
                }
            ],
            routes={"default": name},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic)
        await produce(
            stack_settings.kafka_bootstrap, topic, [(f"k{i}".encode(), b"{}") for i in range(40)]
        )

        async def mode() -> str:
            statuses = {s.name: s for s in await destination_statuses(temporal_client, config)}
            return statuses[name].rate_control

        async def worker_process() -> Client:  # a process of its own: its own client
            return await Client.connect(
                stack_settings.temporal_address, namespace=stack_settings.temporal_namespace
            )

        async with courier_running(temporal_client, config, destinations=[]):
            first = await worker_process()
            async with courier_running(first, config, ingest=False, workflows=False):
                await eventually(lambda: _starts_with(mode(), "circuit open since"), timeout=60)
            receiver.script("/flaky", then=200)
            second = await worker_process()
            async with courier_running(second, config, ingest=False, workflows=False):

                async def closed() -> bool:
                    queue = await describe(temporal_client, f"courier-dest-{name}")
                    return await mode() == "normal" and queue.rate_limit_source != "override"

                # Two probe intervals would do; a loaded machine gets more.
                await eventually(closed, timeout=30)
                await wait_for_workflows(
                    temporal_client, f"CourierDestination = '{name}'", 40, timeout=60
                )
    assert receiver.effects("/flaky") == 40


async def _starts_with(value: Any, prefix: str) -> bool:
    return str(await value).startswith(prefix)


async def test_records_gone_from_kafka_do_not_hold_up_the_probes_of_an_open_circuit(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    """120 records deleted from Kafka wait behind an open circuit with 10 live ones.

    At one probe per interval the deleted ones would take 120 probes before the live ones; they
    fail at once without reaching the destination, so the queue lets them through faster, and
    the live records reach the recovered endpoint within a few probe intervals.
    """
    name, bootstrap = f"gone-{unique}", stack_settings.kafka_bootstrap
    async with Receiver() as receiver:
        receiver.script("/gone", then=503)
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/gone/{{key}}",
                    "retry": FAST_RETRY,
                    "rate_control": {"probe_interval": "2s", "failure_threshold": 3},
                }
            ],
            routes={"default": name},
            ingest={"payloads": "reference"},
        )
        topic = config.kafka.topics[0]
        await create_topic(bootstrap, topic, partitions=1)

        async def mode() -> str:
            statuses = {s.name: s for s in await destination_statuses(temporal_client, config)}
            return statuses[name].rate_control

        async with courier_running(temporal_client, config):
            await produce(bootstrap, topic, [(f"open-{i}".encode(), b"{}") for i in range(3)])
            await eventually(lambda: _starts_with(mode(), "circuit open since"), timeout=60)
            await produce(bootstrap, topic, [(f"gone-{i}".encode(), b"{}") for i in range(120)])
            await produce(bootstrap, topic, [(f"live-{i}".encode(), b"{}") for i in range(10)])
            await wait_for_workflows(temporal_client, f"CourierTopic = '{topic}'", 133, status=None)
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:  # what retention does, sooner: all but the live records are gone
                await admin.delete_records(
                    {TopicPartition(topic, 0): RecordsToDelete(before_offset=123)}
                )
            finally:
                await admin.close()
            receiver.script("/gone", then=200)
            live = [f"/gone/live-{i}" for i in range(10)]

            async def all_live_arrived() -> bool:
                return {r.path for r in receiver.effect_requests("/gone/live-")} == set(live)

            # 123 records at one probe per 2 s would take over 4 minutes.
            await eventually(all_live_arrived, timeout=90)
    assert receiver.effects("/gone/gone-") == 0


async def test_attempts_that_time_out_are_logged_and_shown_as_the_last_error(
    stack_settings: Any, temporal_client: Client, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An endpoint slower than the attempt timeout: Temporal ends each attempt; the worker
    says so, and rate control hears of it (the destination's last error)."""
    name = f"slow-{unique}"
    caplog.set_level(logging.WARNING, logger="activities.export")
    async with Receiver() as receiver:
        receiver.script("/slow", delay=3.0)
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/slow/{{key}}",
                    "retry": {**FAST_RETRY, "maximum_attempts": 2},
                    "timeouts": {"attempt": "1s"},
                }
            ],
            routes={"default": name},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic)
        await produce(stack_settings.kafka_bootstrap, topic, [(b"k0", b"{}")])
        async with courier_running(temporal_client, config):
            await wait_for_workflows(
                temporal_client,
                f"CourierDestination = '{name}'",
                1,
                status=WorkflowExecutionStatus.FAILED,
                timeout=60,
            )

            async def last_error() -> str:
                statuses = {s.name: s for s in await destination_statuses(temporal_client, config)}
                control = statuses[name].control
                return control.last_error if control is not None else ""

            error = await eventually(last_error, timeout=30)
    assert "no answer within the attempt timeout (1s, timeouts.attempt)" in error
    said = [r.getMessage() for r in caplog.records if "timed out, will retry" in r.getMessage()]
    assert said and said[0].startswith(f"{name}: attempt 1 timed out, will retry: "), said
