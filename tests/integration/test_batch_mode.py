"""Batch mode against the real stack: ExportRange workflows over offset ranges, records by
reference, and the same guarantees as per-record mode — one effect per record, nothing handed
off twice after a crash, isolation, the rate limit in records/s, failures per record, replay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecution, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from courier.config.model import CourierConfig
from courier.core import search_attributes as sa
from courier.core.ids import workflow_id
from courier.core.task_queues import describe
from courier.ops import failures, replay
from courier.ops.blocked import BlockedKeyError
from courier.ops.show import show
from courier.ops.skip import skip
from courier.ops.status import destination_statuses
from courier.serving.pacing import PACE_REFRESH_S
from courier_devtools.receiver import ReceivedRequest, Receiver
from courier_devtools.topics import create_topic, produce, topic_id
from ingest.consumer import Ingest
from tests.integration.harness import (
    beyond_limit,
    busiest_window,
    committed_offsets,
    courier_running,
    eventually,
    pipeline_config,
)
from tests.integration.test_pipeline import rewind_group
from workflows.types import ExportRangeInput, RangeBatch

pytestmark = pytest.mark.integration

FAST_RETRY = {"initial_interval": "100ms", "maximum_interval": "1s"}
COURIER = str(Path(sys.executable).with_name("courier"))


def batch(max_records: int = 50) -> dict[str, Any]:
    """The config's ingest section for batch mode."""
    return {"mode": "batch", "max_records": max_records, "max_wait": "200ms"}


def ranges_query(topic: str, status: str | None = None) -> str:
    """Visibility query of the topic's ExportRange runs (of one status)."""
    query = f"WorkflowType = 'ExportRange' AND CourierTopic = '{topic}'"
    return f"{query} AND ExecutionStatus = '{status}'" if status else query


async def count(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count


async def ranges(client: Client, topic: str, status: str | None = None) -> list[WorkflowExecution]:
    """The topic's ExportRange runs (of one status)."""
    return [wf async for wf in client.list_workflows(ranges_query(topic, status))]


async def ranges_settled(client: Client, topic: str) -> bool:
    """Some ranges exist and none is running."""
    return await count(client, ranges_query(topic)) > 0 and not await count(
        client, ranges_query(topic, "Running")
    )


async def range_inputs(client: Client, topic: str) -> list[ExportRangeInput]:
    """The input of every range workflow of ``topic`` (from its history's first event)."""
    inputs = {}
    for wf in await ranges(client, topic):
        if wf.id in inputs:
            continue  # another run of the same range (a replay)
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        [inputs[wf.id]] = await client.data_converter.decode(
            started.input.payloads, [ExportRangeInput]
        )
    return list(inputs.values())


def range_offsets(inp: ExportRangeInput) -> list[int]:
    return sorted(
        [o for piece in inp.slices for o in piece.offsets] + [f.offset for f in inp.failed]
    )


def assert_exact_cover(inputs: Sequence[ExportRangeInput], ends: dict[int, int]) -> None:
    """Ranges are contiguous and together cover offsets 0..end-1 of each partition once."""
    for inp in inputs:
        assert range_offsets(inp) == list(range(inp.first_offset, inp.last_offset + 1)), (
            f"range {inp.partition}/[{inp.first_offset}..{inp.last_offset}] is not contiguous"
        )
    for partition, end in ends.items():
        mine = sorted((i for i in inputs if i.partition == partition), key=lambda i: i.first_offset)
        offsets = [o for inp in mine for o in range_offsets(inp)]
        spans = [(i.first_offset, i.last_offset) for i in mine]
        assert sorted(offsets) == list(range(end)), (
            f"partition {partition}: ranges {spans} do not cover 0..{end - 1} exactly once"
        )


def expected_keys(
    group: str, topic: str, tid: str, keys: Sequence[str], sent: Sequence[RecordMetadata]
) -> dict[str, str]:
    """Record key → the idempotency key of that record (its per-record workflow ID)."""
    return {
        key: workflow_id(
            group=group, topic=topic, topic_id=tid, partition=md.partition, offset=md.offset
        )
        for key, md in zip(keys, sent, strict=True)
    }


def ends_of(sent: Sequence[RecordMetadata]) -> dict[int, int]:
    """One past the last produced offset of each partition."""
    ends: dict[int, int] = {}
    for md in sent:
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    return ends


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def effects_by_key(receiver: Receiver, prefix: str) -> dict[str, ReceivedRequest]:
    """Record key (the URL's last path segment) → the request that had its effect."""
    return {r.path.rsplit("/", 1)[1]: r for r in receiver.effect_requests(prefix)}


def rest_keys(receiver: Receiver, prefix: str) -> dict[str, str]:
    """Record key → the Idempotency-Key of the request that had its effect."""
    return {k: r.idempotency_key or "" for k, r in effects_by_key(receiver, prefix).items()}


def write_config(config: CourierConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    return path


async def spawn(*args: str, log: Path) -> asyncio.subprocess.Process:
    """Start ``courier ARGS`` with its log in ``log``."""
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            COURIER,
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


@contextlib.asynccontextmanager
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes the block starts; any still running at the end get SIGTERM, then SIGKILL."""
    started: list[asyncio.subprocess.Process] = []
    try:
        yield started
    finally:
        for process in started:
            if process.returncode is None:
                process.terminate()
        for process in started:
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def terminate_running(client: Client, topic: str) -> None:
    """Terminate this test's range workflows still running (they would retry forever)."""
    for wf in await ranges(client, topic, "Running"):
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(wf.id, run_id=wf.run_id).terminate(reason="test over")


async def caught_up(ingest: Ingest | None, n: int) -> bool:
    """Ingest handed off ``n`` records and committed all of them."""
    assert ingest is not None
    return (
        ingest.counts["started"] + ingest.counts["existing"] + ingest.counts["skipped"] >= n
        and ingest.tracker.in_flight() == 0
        and ingest.tracker.committable() == {}
    )


def closed_port() -> int:
    """A local port nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --------------------------------------------------------------------------------------- tests
async def test_batch_mode_exports_every_record_exactly_once_to_each_kind(
    stack_settings: Any, temporal_client: Client, pg_pool: Any, unique: str, tmp_path: Path
) -> None:
    table = f"batch_{unique}"
    archive = tmp_path / "archive.jsonl"
    per_kind = 100
    async with Receiver() as receiver:
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": f"api-{unique}",
                    "kind": "rest",
                    "url": f"{receiver.url}/orders/{{key}}",
                    "retry": FAST_RETRY,
                    "batch_size": 20,
                },
                {"name": f"file-{unique}", "kind": "file", "path": str(archive), "batch_size": 30},
                {
                    "name": f"pg-{unique}",
                    "kind": "postgres",
                    "dsn": stack_settings.postgres_dsn,
                    "table": table,
                    "batch_size": 25,
                },
            ],
            routes={
                "rules": [
                    {"prefix": "api-", "destination": f"api-{unique}"},
                    {"prefix": "file-", "destination": f"file-{unique}"},
                    {"prefix": "pg-", "destination": f"pg-{unique}"},
                ]
            },
            ingest=batch(50),
        )
        topic, group = config.kafka.topics[0], config.kafka.group
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=3)
        keys = [f"{kind}-{i}" for i in range(per_kind) for kind in ("api", "file", "pg")]
        sent = await produce(
            stack_settings.kafka_bootstrap,
            topic,
            [(k.encode(), json.dumps({"key": k}).encode()) for k in keys],
        )
        tid = await topic_id(stack_settings.kafka_bootstrap, topic)
        expected = expected_keys(group, topic, tid, keys, sent)

        async def done() -> bool:
            return (
                receiver.effects("/orders/") >= per_kind
                and len(lines_of(archive)) >= per_kind
                and await pg_pool.fetchval(f'SELECT count(*) FROM "{table}"') >= per_kind
                and await caught_up(ingest, len(keys))
                and await ranges_settled(temporal_client, topic)
            )

        try:
            async with courier_running(temporal_client, config) as ingest:
                await eventually(done, timeout=60)
            assert ingest is not None
            assert ingest.counts["started"] == len(keys)
            assert not await ranges(temporal_client, topic, "Failed")

            # REST: one effect per record, carrying the record's own idempotency key.
            assert receiver.effects("/orders/") == per_kind
            assert receiver.duplicates() == 0
            assert rest_keys(receiver, "/orders/") == {
                k: v for k, v in expected.items() if k.startswith("api-")
            }
            # File: each record once, with its idempotency key.
            lines = lines_of(archive)
            assert sorted(line["key"] for line in lines) == sorted(
                k for k in keys if k.startswith("file-")
            )
            assert all(line["idempotency_key"] == expected[line["key"]] for line in lines)
            # PostgreSQL: one row per record, with its idempotency key.
            rows = await pg_pool.fetch(f'SELECT key, idempotency_key FROM "{table}"')
            assert len(rows) == per_kind
            assert {r["key"]: r["idempotency_key"] for r in rows} == {
                k: v for k, v in expected.items() if k.startswith("pg-")
            }
            # The ranges cover every offset exactly once.
            assert_exact_cover(await range_inputs(temporal_client, topic), ends_of(sent))
        finally:
            await pg_pool.execute(f'DROP TABLE IF EXISTS "{table}"')


async def test_batch_mode_reconsuming_from_zero_starts_nothing_and_has_no_effect(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive.jsonl"
    per_kind = 45
    async with Receiver() as receiver:
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": f"api-{unique}",
                    "kind": "rest",
                    "url": f"{receiver.url}/orders/{{key}}",
                    "retry": FAST_RETRY,
                },
                {"name": f"file-{unique}", "kind": "file", "path": str(archive)},
            ],
            routes={
                "rules": [{"prefix": "api-", "destination": f"api-{unique}"}],
                "default": f"file-{unique}",
            },
            ingest=batch(20),
        )
        topic, group = config.kafka.topics[0], config.kafka.group
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=3)
        keys = [f"{kind}-{i}" for i in range(per_kind) for kind in ("api", "file")]
        await produce(stack_settings.kafka_bootstrap, topic, [(k.encode(), b"{}") for k in keys])

        async with courier_running(temporal_client, config) as first:

            async def first_done() -> bool:
                return (
                    receiver.effects("/orders/") >= per_kind
                    and len(lines_of(archive)) >= per_kind
                    and await caught_up(first, len(keys))
                    and await ranges_settled(temporal_client, topic)
                )

            await eventually(first_done, timeout=60)
        workflows = await count(temporal_client, f"CourierTopic = '{topic}'")
        requests, effects = len(receiver.requests), receiver.effects()
        lines = archive.read_text()
        assert effects == len(keys) - per_kind and len(lines.splitlines()) == per_kind

        await rewind_group(stack_settings.kafka_bootstrap, group, topic)
        assert await committed_offsets(stack_settings.kafka_bootstrap, group, topic, 3) == [0] * 3
        async with courier_running(temporal_client, config) as again:
            await eventually(lambda: caught_up(again, len(keys)), timeout=60)
        assert again is not None
        assert again.counts["started"] == 0, f"second run: {dict(again.counts)}"
        assert again.counts["existing"] == len(keys), f"second run: {dict(again.counts)}"
        assert await count(temporal_client, f"CourierTopic = '{topic}'") == workflows
        assert receiver.effects() == effects and len(receiver.requests) == requests
        assert archive.read_text() == lines


async def test_batch_mode_ingest_killed_mid_range_hands_off_every_offset_once(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    total, first_chunk, chunk = 300, 30, 10
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=[{"name": f"file-{unique}", "kind": "file", "path": str(out)}],
        routes={"default": f"file-{unique}"},
        ingest=batch(10),
    )
    # The killed ingest commits nothing (commits an hour apart): the next run reads every
    # record again and must find each range the killed one started, whatever it cuts now.
    killed = config.model_copy(
        update={"kafka": config.kafka.model_copy(update={"commit_interval": timedelta(hours=1)})}
    )
    config_file = write_config(killed, tmp_path / "courier.yaml")
    topic = config.kafka.topics[0]
    bootstrap = stack_settings.kafka_bootstrap
    await create_topic(bootstrap, topic, partitions=3)
    keys = [f"k{i}" for i in range(total)]
    sent = await produce(bootstrap, topic, [(k.encode(), b"{}") for k in keys[:first_chunk]])

    async def produce_rest() -> list[RecordMetadata]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            result = []
            for start in range(first_chunk, total, chunk):
                futures = [
                    await producer.send(topic, key=k.encode(), value=b"{}")
                    for k in keys[start : start + chunk]
                ]
                result += await asyncio.gather(*futures)
                await asyncio.sleep(0.15)
            return result
        finally:
            await producer.stop()

    async with processes() as started:
        ingest_process = await spawn("ingest", "-c", str(config_file), log=tmp_path / "ingest.log")
        started.append(ingest_process)
        # Ingest is up once it started a range; then records keep arriving while it runs.
        await eventually(lambda: count(temporal_client, ranges_query(topic)), timeout=60)
        before = await count(temporal_client, ranges_query(topic))
        producer = asyncio.create_task(produce_rest())

        async def more_ranges() -> bool:
            return await count(temporal_client, ranges_query(topic)) >= before + 3

        await eventually(more_ranges, timeout=30, interval=0.05)
        ingest_process.kill()
        assert await ingest_process.wait() == -signal.SIGKILL
        assert not producer.done(), "all records were produced before the kill: not mid-stream"
        sent += await producer
    assert await committed_offsets(bootstrap, config.kafka.group, topic, 3) == [-1] * 3
    at_kill = await range_inputs(temporal_client, topic)
    handed_off = sum(len(range_offsets(i)) for i in at_kill)

    # Courier (ingest and workers) again: the ranges the killed ingest started are found and
    # skipped, the rest are handed off, every record is exported once.
    async with courier_running(temporal_client, config) as ingest:

        async def done() -> bool:
            return (
                len(lines_of(out)) >= total
                and await ranges_settled(temporal_client, topic)
                and ingest is not None
                and ingest.tracker.in_flight() == 0
                and ingest.tracker.committable() == {}
            )

        await eventually(done, timeout=90)
    assert ingest is not None
    # The second run read every record again and found the killed one's ranges.
    assert ingest.counts["started"] + ingest.counts["existing"] == total, dict(ingest.counts)
    assert ingest.counts["existing"] > 0 and handed_off > 0, dict(ingest.counts)
    ends = ends_of(sent)
    assert sum(ends.values()) == total
    assert await committed_offsets(bootstrap, config.kafka.group, topic, 3) == [
        ends.get(p, 0) for p in range(3)
    ]
    lines = lines_of(out)
    assert sorted(line["key"] for line in lines) == sorted(keys), "a record is missing or twice"
    inputs = await range_inputs(temporal_client, topic)
    assert 0 < len(at_kill) < len(inputs), "the kill was not mid-stream"
    assert {(i.partition, i.first_offset) for i in at_kill} <= {
        (i.partition, i.first_offset) for i in inputs
    }
    assert sum(len(range_offsets(i)) for i in inputs) == total
    assert_exact_cover(inputs, ends)
    assert not await ranges(temporal_client, topic, "Failed")


async def test_batch_mode_worker_killed_mid_batch_has_one_effect_per_record(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    total = 60
    async with Receiver() as receiver:
        receiver.script("/slow/", delay=0.4)
        name = f"slow-{unique}"
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/slow/{{key}}",
                    "retry": FAST_RETRY,
                    "batch_size": 10,
                    "read_timeout": "4s",
                    "timeouts": {"attempt": "5s"},  # how soon a dead worker's task is retried
                }
            ],
            routes={"default": name},
            ingest=batch(20),
        )
        config_file = write_config(config, tmp_path / "worker.yaml")
        topic, group = config.kafka.topics[0], config.kafka.group
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        keys = [f"k{i}" for i in range(total)]
        sent = await produce(
            stack_settings.kafka_bootstrap, topic, [(k.encode(), b"{}") for k in keys]
        )
        tid = await topic_id(stack_settings.kafka_bootstrap, topic)

        async with processes() as started:
            worker_args = ("worker", "-c", str(config_file), "-d", name)
            doomed = await spawn(*worker_args, log=tmp_path / "worker-1.log")
            started.append(doomed)
            # Ingest and the workflow worker here; the destination only in the subprocess.
            async with courier_running(temporal_client, config, destinations=[]):

                async def exporting() -> bool:
                    return len(receiver.times("/slow/")) >= 5

                await eventually(exporting, timeout=60, interval=0.05)
                doomed.kill()
                assert await doomed.wait() == -signal.SIGKILL
                at_kill = receiver.effects("/slow/")
                assert at_kill < total, "the worker finished before it was killed"

                started.append(await spawn(*worker_args, log=tmp_path / "worker-2.log"))

                async def done() -> bool:
                    return receiver.effects("/slow/") >= total and await ranges_settled(
                        temporal_client, topic
                    )

                await eventually(done, timeout=90)

    assert receiver.effects("/slow/") == total, f"{len(receiver.requests)} requests"
    assert rest_keys(receiver, "/slow/") == expected_keys(group, topic, tid, keys, sent)
    assert not await ranges(temporal_client, topic, "Failed")


async def test_batch_mode_rate_limit_holds_in_records_per_second(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    limit, total = 10.0, 60  # 12 activities of 5 records: 6-15 s
    async with Receiver() as receiver:
        name = f"api-{unique}"
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/api/{{key}}",
                    "retry": FAST_RETRY,
                    "rate_limit": limit,
                    "batch_size": 5,
                }
            ],
            routes={"default": name},
            ingest=batch(30),  # ranges of 30 records: 6 activities each at batch_size 5
        )
        config_file = write_config(config, tmp_path / "worker.yaml")
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)

        async with processes() as started:
            logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
            for log in logs:
                started.append(await spawn("worker", "-c", str(config_file), "-d", name, log=log))

            async def serving() -> bool:  # each process logs this once its worker runs
                return all(
                    f"worker for {name}" in " ".join(log.read_text().split()) for log in logs
                )

            await eventually(serving, timeout=30)
            async with courier_running(temporal_client, config, ingest=False):
                queue = config.destination(name).task_queue

                async def all_polling() -> bool:
                    return (await describe(temporal_client, queue)).workers == 3

                await eventually(all_polling)
                # Each worker re-reads the queue's workers every second: let all see three (a
                # worker that joins a busy queue is counted by the others within a second).
                await asyncio.sleep(2 * PACE_REFRESH_S)
                # Every record waits in Kafka before ingest starts, so every range is full (30
                # records) and only batch_size keeps each activity at 5 records.
                sent = await produce(
                    stack_settings.kafka_bootstrap,
                    topic,
                    [(f"k{i}".encode(), b"{}") for i in range(total)],
                )
                async with courier_running(temporal_client, config, workers=False):

                    async def done() -> bool:
                        return receiver.effects("/api/") >= total

                    await eventually(done, timeout=35)

    assert receiver.effects("/api/") == total
    offset_of = {f"k{i}": md.offset for i, md in enumerate(sent)}
    arrived = {offset_of[key]: r.time for key, r in effects_by_key(receiver, "/api/").items()}
    activities = sorted(
        (min(arrived[o] for o in offsets), len(offsets))
        for offsets in await activity_batches(temporal_client, topic)
    )
    # Records arrive spaced by the workers' pacing: within the limit over every stretch.
    times = sorted(arrived.values())
    seen = f"activities (records): {[n for _, n in activities]}; busiest second " + str(
        busiest_window(times)
    )
    assert (over := beyond_limit(times, limit)) is None, (
        f"3 workers, rate_limit {limit}/s, batch_size 5: {over}; {seen}"
    )
    assert busiest_window(times) <= 1.5 * limit + 1, seen
    # An activity carries no more than batch_size records.
    assert max(n for _, n in activities) <= 5, f"activities carry more than batch_size 5: {seen}"


async def activity_batches(client: Client, topic: str) -> list[list[int]]:
    """The offsets of every export_range activity the topic's ranges scheduled."""
    batches = []
    for wf in await ranges(client, topic):
        handle = client.get_workflow_handle(wf.id, run_id=wf.run_id)
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                payloads = event.activity_task_scheduled_event_attributes.input.payloads
                [part] = await client.data_converter.decode(payloads, [RangeBatch])
                batches.append(list(part.offsets))
    return batches


async def test_batch_mode_down_destination_never_holds_back_a_healthy_one(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    per_kind = 60
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=[
            {"name": f"file-{unique}", "kind": "file", "path": str(out)},
            {
                "name": f"down-{unique}",
                "kind": "rest",
                "url": f"http://127.0.0.1:{closed_port()}/down/{{key}}",
                "retry": {"initial_interval": "100ms", "maximum_interval": "1s"},
            },
        ],
        routes={
            "rules": [{"prefix": "down-", "destination": f"down-{unique}"}],
            "default": f"file-{unique}",
        },
        ingest=batch(20),
    )
    topic = config.kafka.topics[0]
    await create_topic(stack_settings.kafka_bootstrap, topic, partitions=3)
    keys = [f"{kind}-{i}" for i in range(per_kind) for kind in ("ok", "down")]
    await produce(stack_settings.kafka_bootstrap, topic, [(k.encode(), b"{}") for k in keys])
    try:
        async with courier_running(temporal_client, config) as ingest:

            async def healthy_done() -> bool:
                return len(lines_of(out)) >= per_kind

            await eventually(healthy_done, timeout=30)
            await eventually(lambda: caught_up(ingest, len(keys)), timeout=30)
            total = await count(temporal_client, ranges_query(topic))
            running = await count(temporal_client, ranges_query(topic, "Running"))
            done = await count(temporal_client, ranges_query(topic, "Completed"))
        assert sorted(line["key"] for line in lines_of(out)) == sorted(
            k for k in keys if k.startswith("ok-")
        )
        # Every range holds records of the down destination: all still running, none closed.
        assert total > 0 and running == total and done == 0, (total, running, done)
    finally:
        await terminate_running(temporal_client, topic)


async def test_batch_mode_failed_records_get_their_own_workflows_and_are_replayed_once(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    bad_at = {3, 8, 12, 17}
    keys = [f"bad-{i}" if i in bad_at else f"good-{i}" for i in range(20)]
    async with Receiver() as receiver:
        receiver.script("/p/bad-", then=422)
        name = f"api-{unique}"
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/p/{{key}}",
                    "retry": FAST_RETRY,
                }
            ],
            routes={"default": name},
            ingest=batch(50),
        )
        topic, group = config.kafka.topics[0], config.kafka.group
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        sent = await produce(
            stack_settings.kafka_bootstrap, topic, [(k.encode(), b"{}") for k in keys]
        )
        tid = await topic_id(stack_settings.kafka_bootstrap, topic)
        expected = expected_keys(group, topic, tid, keys, sent)
        offsets = {k: md.offset for k, md in zip(keys, sent, strict=True)}
        good = {k: v for k, v in expected.items() if k.startswith("good-")}
        bad = {k: v for k, v in expected.items() if k.startswith("bad-")}
        records_query = f"WorkflowType = 'ExportRecord' AND CourierTopic = '{topic}'"

        async with courier_running(temporal_client, config) as ingest:

            async def settled() -> bool:
                return (
                    await caught_up(ingest, len(keys))
                    and await ranges_settled(temporal_client, topic)
                    and await count(
                        temporal_client, f"{records_query} AND ExecutionStatus = 'Failed'"
                    )
                    == len(bad)
                )

            await eventually(settled, timeout=60)

            # The ranges complete, counting their failed records; none fails.
            assert not await ranges(temporal_client, topic, "Failed")
            done = await ranges(temporal_client, topic, "Completed")
            assert sum(wf.typed_search_attributes.get(sa.FAILED_COUNT) or 0 for wf in done) == 4
            # Each bad record has its own Failed workflow, under the ID per-record mode gives it.
            records = [wf async for wf in temporal_client.list_workflows(records_query)]
            assert sorted(wf.id for wf in records) == sorted(bad.values())
            for wf in records:
                assert wf.status is not None and wf.status.name == "FAILED"
                attrs = wf.typed_search_attributes
                assert attrs.get(sa.DESTINATION) == name and attrs.get(sa.TOPIC) == topic
                with pytest.raises(WorkflowFailureError) as failure:
                    await temporal_client.get_workflow_handle(wf.id).result(follow_runs=False)
                cause = failure.value.cause
                assert isinstance(cause, ApplicationError) and cause.type == "ExportFailed"
                message, offset = cause.message, attrs.get(sa.OFFSET)
                assert message.startswith(f"export of {topic}/0/{offset} to {name} failed: "), (
                    message
                )
                assert "422" in message, message
            # The good records were delivered, once each; the bad ones not.
            assert rest_keys(receiver, "/p/good-") == good
            assert receiver.effects("/p/bad-") == 0
            good_requests = len(receiver.times("/p/good-"))
            bad_requests = len(receiver.times("/p/bad-"))

            # courier show opens a failed record's own workflow; skip says there is no key to
            # skip, as for a per-record failure.
            bad_3 = offsets["bad-3"]
            journey = await show(temporal_client, config, f"{topic}/0/{bad_3}")
            assert (journey.workflow_id, journey.workflow_type) == (bad["bad-3"], "ExportRecord")
            assert journey.status == "FAILED" and journey.destination == name
            assert journey.failure is not None and "422" in journey.failure
            assert journey.record is not None and journey.record.source == "Kafka"
            assert journey.record.key.text == "bad-3"
            assert any("failed in batch range" in note for note in journey.notes), journey.notes
            with pytest.raises(BlockedKeyError, match="is a failed export"):
                await skip(temporal_client, bad["bad-3"])

            # courier failures lists the records, one workflow each; replay re-exports them alone.
            found = await failures.find_failures(
                temporal_client, config, destination=name, extra=f"CourierTopic = '{topic}'"
            )
            assert sorted(r.coordinates for f in found for r in f.records) == sorted(
                f"{topic}/0/{offsets[k]}" for k in bad
            )
            assert {f.execution.id for f in found} == set(bad.values())
            receiver.script("/p/bad-", then=200)
            for export in found:
                await replay.replay(temporal_client, export.execution, reason="test: fixed")

            async def replayed() -> bool:
                return await count(
                    temporal_client, f"{records_query} AND ExecutionStatus = 'Completed'"
                ) == len(bad) and receiver.effects("/p/bad-") >= len(bad)

            await eventually(replayed, timeout=60)
            assert await failures.find_failures(temporal_client, config, destination=name) == []

    assert rest_keys(receiver, "/p/bad-") == bad, "each bad record has its effect once"
    assert len(receiver.times("/p/bad-")) == bad_requests + len(bad), "only the bad records again"
    assert len(receiver.times("/p/good-")) == good_requests, "a good record sent again"
    assert rest_keys(receiver, "/p/good-") == good


async def test_a_retried_range_sends_only_the_records_without_an_effect(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    keys = [f"ok-{i}" for i in range(19)] + ["flaky-1"]
    async with Receiver() as receiver:
        receiver.script("/p/flaky-", first=[503])  # unavailable once, then fine
        name = f"api-{unique}"
        config = pipeline_config(
            stack_settings,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/p/{{key}}",
                    "retry": FAST_RETRY,
                }
            ],
            routes={"default": name},
            ingest=batch(50),
        )
        topic = config.kafka.topics[0]
        await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
        await produce(stack_settings.kafka_bootstrap, topic, [(k.encode(), b"{}") for k in keys])
        async with courier_running(temporal_client, config) as ingest:

            async def settled() -> bool:
                return await caught_up(ingest, len(keys)) and await ranges_settled(
                    temporal_client, topic
                )

            await eventually(settled, timeout=60)
        assert [wf.status.name for wf in await ranges(temporal_client, topic) if wf.status] == [
            "COMPLETED"
        ]
    assert receiver.effects("/p/") == 20
    assert len(receiver.times("/p/ok-")) == 19, "a record with an effect was sent again"
    assert len(receiver.times("/p/flaky-")) == 2


async def test_status_counts_records_not_ranges(
    stack_settings: Any, temporal_client: Client, unique: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = pipeline_config(
        stack_settings,
        unique,
        destinations=[{"name": f"file-{unique}", "kind": "file", "path": str(out)}],
        routes={"default": f"file-{unique}"},
        ingest=batch(max_records=10),
    )
    topic = config.kafka.topics[0]
    await create_topic(stack_settings.kafka_bootstrap, topic, partitions=1)
    await produce(
        stack_settings.kafka_bootstrap, topic, [(f"k{i}".encode(), b"{}") for i in range(30)]
    )
    async with courier_running(temporal_client, config):
        await eventually(lambda: ranges_settled(temporal_client, topic), timeout=60)

        async def done() -> int | None:
            (status,) = await destination_statuses(temporal_client, config)
            return status.completed if status.completed == 30 else None

        await eventually(done, timeout=30)
    assert await count(temporal_client, ranges_query(topic, "Completed")) == 3
