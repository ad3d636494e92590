"""The destinations' gauges read from Temporal (``courier.app.collector``), with a fake server."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from courier.app import collector as collector_module
from courier.app.collector import DestinationCollector
from courier.config.model import CourierConfig, parse_config
from courier.core.logs import Throttle
from courier.core.task_queues import QueueState


def make_config() -> CourierConfig:
    return parse_config(
        {
            "kafka": {"topics": ["t"], "group": "g"},
            "destinations": [
                {"name": "col-api", "kind": "rest", "url": "http://127.0.0.1:1/{key}"},
                {"name": "col-file", "kind": "file", "path": "/nonexistent/out.jsonl"},
            ],
            "routes": {"default": "col-file"},
        },
        environ={},
    )


def queue(
    name: str, backlog: int, age: float, workers: int, limit: float | None, source: str
) -> QueueState:
    return QueueState(
        task_queue=name,
        backlog=backlog,
        backlog_age_s=age,
        dispatch_rate=0.0,
        workers=workers,
        worker_identities=frozenset(f"w{i}" for i in range(workers)),
        rate_limit=limit,
        rate_limit_source=source,
    )


class FakeServer:
    """Answers ``describe`` from ``states``; a task queue in ``failing`` raises instead."""

    def __init__(self) -> None:
        self.states: dict[str, QueueState] = {}
        self.failing: set[str] = set()
        self.asked: list[str] = []

    async def describe(self, client: Client, task_queue: str) -> QueueState:
        self.asked.append(task_queue)
        await asyncio.sleep(0)
        if task_queue in self.failing:
            raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
        return self.states[task_queue]


def gauge(name: str, destination: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"destination": destination})


def errors() -> float:
    return REGISTRY.get_sample_value("courier_collect_errors_total", {"source": "task_queue"}) or 0


async def test_each_destination_gets_its_queue_gauges() -> None:
    server = FakeServer()
    server.states["courier-dest-col-api"] = queue(
        "courier-dest-col-api", 120, 33.5, 2, 5.0, "override"
    )
    server.states["courier-dest-col-file"] = queue("courier-dest-col-file", 0, 0.0, 1, None, "none")
    collector = DestinationCollector(None, make_config(), describe_queue=server.describe)  # type: ignore[arg-type]

    assert await collector.collect() == 0
    assert sorted(server.asked) == ["courier-dest-col-api", "courier-dest-col-file"]
    assert gauge("courier_destination_backlog_records", "col-api") == 120
    assert gauge("courier_destination_oldest_pending_seconds", "col-api") == 33.5
    assert gauge("courier_destination_workers", "col-api") == 2
    assert gauge("courier_destination_rate_limit", "col-api") == 5.0
    assert gauge("courier_destination_backlog_records", "col-file") == 0
    assert gauge("courier_destination_oldest_pending_seconds", "col-file") == 0
    assert gauge("courier_destination_rate_limit", "col-file") == 0  # unlimited


async def test_a_failed_read_is_counted_logged_once_a_minute_and_keeps_the_last_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FakeServer()
    server.states["courier-dest-col-api"] = queue("courier-dest-col-api", 7, 3.0, 1, None, "none")
    server.states["courier-dest-col-file"] = queue("courier-dest-col-file", 1, 1.0, 1, None, "none")
    collector = DestinationCollector(None, make_config(), describe_queue=server.describe)  # type: ignore[arg-type]
    await collector.collect()
    server.failing.add("courier-dest-col-api")
    server.states["courier-dest-col-file"] = queue("courier-dest-col-file", 4, 2.0, 1, None, "none")
    before = errors()
    with caplog.at_level(logging.WARNING, logger="courier.metrics"):
        assert await collector.collect() == 1
        assert await collector.collect() == 1
    assert errors() == before + 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "courier-dest-col-api" in warnings[0] and "connection refused" in warnings[0]
    assert gauge("courier_destination_backlog_records", "col-api") == 7  # the last value read
    assert gauge("courier_destination_backlog_records", "col-file") == 4  # the other goes on


async def test_run_survives_errors_and_keeps_collecting() -> None:
    server = FakeServer()
    server.failing.update({"courier-dest-col-api", "courier-dest-col-file"})
    collector = DestinationCollector(
        None,  # type: ignore[arg-type]
        make_config(),
        interval_s=0.01,
        describe_queue=server.describe,
    )
    task = asyncio.create_task(collector.run())
    try:
        while len(server.asked) < 6:
            assert not task.done(), task
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert len(server.asked) >= 6


async def test_a_read_that_hangs_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector_module, "DESCRIBE_TIMEOUT_S", 0.05)

    async def hangs(client: Client, task_queue: str) -> QueueState:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    collector = DestinationCollector(None, make_config(), describe_queue=hangs)  # type: ignore[arg-type]
    before = errors()
    assert await asyncio.wait_for(collector.collect(), 5) == 2
    assert errors() == before + 2


def test_error_log_lets_one_line_through_per_window() -> None:
    limit = Throttle(every_s=60)
    assert limit.due(now=1000.0)
    assert not limit.due(now=1030.0)
    assert not limit.due(now=1059.9)
    assert limit.due(now=1060.0)
