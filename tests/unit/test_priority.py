"""Record priorities: the destination's turn (fairness key), lower while it is congested."""

from __future__ import annotations

import math
from typing import Any

import pytest
from temporalio.common import Priority

from courier.config.model import parse_config
from courier.core.task_queues import QueueState
from ingest import priority
from ingest.priority import DestinationLoad, expected_wait, record_priority

CONFIG = parse_config(
    {
        "kafka": {"topics": ["t"], "group": "g"},
        "destinations": [
            {"name": "api", "kind": "rest", "url": "http://127.0.0.1:9/x"},
            {"name": "slow", "kind": "rest", "url": "http://127.0.0.1:9/y", "rate_limit": 5},
        ],
        "routes": {"default": "api"},
    },
    environ={},
)


def queue(
    backlog: int, dispatch: float, limit: float | None = None, age: float = 0.0
) -> QueueState:
    return QueueState(
        task_queue="q",
        backlog=backlog,
        backlog_age_s=age,
        dispatch_rate=dispatch,
        workers=1,
        worker_identities=frozenset({"w"}),
        rate_limit=limit,
        rate_limit_source="worker" if limit else "none",
    )


def test_expected_wait_is_the_backlog_over_the_rate_it_drains_at() -> None:
    assert expected_wait(queue(0, 0.0)) == 0.0
    assert expected_wait(queue(300, 100.0, limit=5.0)) == pytest.approx(60.0)  # the limit binds
    assert expected_wait(queue(300, 0.0, limit=0.2)) == pytest.approx(1500.0)  # circuit open
    assert expected_wait(queue(20, 200.0)) == pytest.approx(0.1)  # healthy and busy
    assert math.isinf(expected_wait(queue(5, 0.0)))  # nobody takes them
    assert expected_wait(queue(5, 100.0, age=30.0)) == 30.0  # the oldest waited longer


def test_the_destination_is_the_fairness_key_and_congestion_lowers_the_priority() -> None:
    assert record_priority(CONFIG, "api", False) == Priority(fairness_key="api")
    assert record_priority(CONFIG, "slow", True) == Priority(
        fairness_key="slow", priority_key=priority.LOW_PRIORITY
    )
    assert record_priority(CONFIG, None, False) == Priority.default  # no route, no turn
    off = CONFIG.model_copy(update={"ingest": CONFIG.ingest.model_copy(update={"fairness": False})})
    assert record_priority(off, "api", True) == Priority.default


async def test_load_marks_destinations_congested_and_clears_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    states = {"courier-dest-api": queue(10, 100.0), "courier-dest-slow": queue(300, 5.0, 5.0)}

    async def fake_describe(client: Any, task_queue: str) -> QueueState:
        return states[task_queue]

    monkeypatch.setattr(priority, "describe", fake_describe)
    load = DestinationLoad(None, CONFIG)  # type: ignore[arg-type]
    await load._refresh("api", "courier-dest-api")
    await load._refresh("slow", "courier-dest-slow")
    assert (load.congested("api"), load.congested("slow")) == (False, True)
    states["courier-dest-slow"] = queue(20, 5.0, 5.0)  # 4 s of backlog left
    await load._refresh("slow", "courier-dest-slow")
    assert not load.congested("slow")


async def test_a_failed_read_keeps_the_last_view(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(client: Any, task_queue: str) -> QueueState:
        raise RuntimeError("connection lost")

    load = DestinationLoad(None, CONFIG)  # type: ignore[arg-type]
    load._congested.add("slow")
    monkeypatch.setattr(priority, "describe", broken)
    await load._refresh("slow", "courier-dest-slow")
    assert load.congested("slow") and "cannot read the backlog" in caplog.text
