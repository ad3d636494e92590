"""Batch mode's range hand-off follows the per-record failure contract, with a fake client.

A range that cannot be started for a reason of its own (an error injected into the start, a
refusal, a bug building its input) still gets a durable, visible outcome: an ``ExportRange``
workflow that exports nothing and fails listing each record with the reason; the partition
moves on. The real stack: ``tests/integration/test_ingest_failures.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from courier.config.model import CourierConfig, parse_config
from courier.core import metrics
from ingest import handoff
from ingest import ranges as ranges_module
from ingest.consumer import Ingest
from ingest.ranges import RangeHandOff, Ranges, RangeSpan, failed_range_input, hand_off_range
from ingest.routing import RouteDecision, Router
from tests.unit.test_handoff import FakeClient, unavailable
from tests.unit.test_ingest_loop import (
    TOPIC,
    TOPIC_ID,
    TP,
    FakeConsumer,
    FakeTopicIds,
    records,
    settle,
)
from workflows.types import ExportRangeInput, FailedRecord

WID = f"courier/g/{TOPIC}@{TOPIC_ID}/0/0/range"


def batch_config(max_records: int = 3, max_bytes: int = 1 << 20) -> CourierConfig:
    return parse_config(
        {
            "kafka": {"topics": [TOPIC], "group": "g"},
            "destinations": [
                {"name": "api", "kind": "rest", "url": "http://127.0.0.1:9/x"},
                {"name": "files", "kind": "file", "path": "/nonexistent/out.jsonl"},
            ],
            "routes": {
                "rules": [
                    {"prefix": "k1", "destination": "files"},
                    {"prefix": "k", "destination": "api"},
                ],
                "unmatched": "skip",
            },
            "ingest": {
                "mode": "batch",
                "max_records": max_records,
                "max_bytes": max_bytes,
                "max_wait": "1h",
            },
        },
        environ={},
    )


CONFIG = batch_config()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(handoff.asyncio, "sleep", no_sleep)
    return slept


async def run_range(
    client: FakeClient, keys: list[bytes | RouteDecision | None] | None = None
) -> RangeHandOff:
    keys = keys if keys is not None else [b"k0", b"k1", b"k2"]
    return await hand_off_range(
        client,  # type: ignore[arg-type]
        CONFIG,
        Router(CONFIG.routes),
        topic=TOPIC,
        topic_id=TOPIC_ID,
        partition=0,
        offsets=list(range(len(keys))),
        keys=keys,
    )


def started_input(client: FakeClient) -> ExportRangeInput:
    built = client.calls[-1]["args"][1]
    assert isinstance(built, ExportRangeInput)
    return built


def failures() -> float:
    value: float = metrics.HAND_OFF_FAILURES.labels(TOPIC)._value.get()
    return value


async def test_a_range_starts_once_temporal_is_reachable_again(sleeps: list[float]) -> None:
    client = FakeClient([unavailable(), unavailable()])
    result = await run_range(client)
    assert result == RangeHandOff(2, started=3, existing=0, skipped=0, failed=0)
    assert len(client.calls) == 3 and sleeps == [0.5, 1.0]
    assert client.calls[-1]["id"] == WID
    assert [piece.destination.name for piece in started_input(client).slices] == ["api", "files"]


async def test_an_unexpected_error_starting_a_range_gives_a_failed_range(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """The injected error, as a codec that cannot encode the input would raise it."""
    client = FakeClient([ValueError("cannot encode this one")])
    before = failures()
    with caplog.at_level(logging.ERROR, logger="courier.ingest"):
        result = await run_range(client)

    assert result == RangeHandOff(2, started=0, existing=0, skipped=0, failed=3)
    assert sleeps == []  # about the range itself: not retried
    failed = started_input(client)
    assert client.calls[-1]["id"] == WID  # under the range's own ID: found again after a crash
    assert client.calls[-1]["memo"] == {"last_offset": 2, "records": {}}
    assert failed.slices == [] and (failed.first_offset, failed.last_offset) == (0, 2)
    reason = "hand-off failed: ValueError: cannot encode this one"
    assert failed.failed == [
        FailedRecord(0, "api", reason),
        FailedRecord(1, "files", reason),
        FailedRecord(2, "api", reason),
    ]
    attributes = {
        p.key.name: p.value for p in client.calls[-1]["search_attributes"].search_attributes
    }
    assert attributes["CourierDestination"] == "(several)"
    assert attributes["CourierOffset"] == 0
    [logged] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert (
        logged.getMessage() == f"{TOPIC}/0 [0..2] cannot be handed off, its range fails: {reason}"
    )
    assert failures() == before + 1


async def test_temporal_refusing_a_range_gives_a_failed_range(sleeps: list[float]) -> None:
    refused = RPCError("Blob data size exceeds limit.", RPCStatusCode.INVALID_ARGUMENT, b"")
    client = FakeClient([refused])
    result = await run_range(client, [b"k0", b"skip-1", b"k2"])
    assert result == RangeHandOff(2, started=0, existing=0, skipped=1, failed=2)
    assert sleeps == []
    reason = "Temporal refused the range's workflow: Blob data size exceeds limit."
    # The skipped record stays skipped; the others fail with the reason.
    assert started_input(client).failed == [
        FailedRecord(0, "api", reason),
        FailedRecord(2, "api", reason),
    ]


async def test_a_range_whose_input_cannot_be_built_gets_a_failed_range(
    sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug in building the range")

    monkeypatch.setattr(ranges_module, "range_input", broken)
    client = FakeClient([])
    result = await run_range(client)
    assert result == RangeHandOff(2, started=0, existing=0, skipped=0, failed=3)
    assert len(client.calls) == 1 and sleeps == []
    reason = "hand-off failed: KeyError: 'a bug in building the range'"
    assert started_input(client).failed == [FailedRecord(o, None, reason) for o in range(3)]


async def test_errors_about_courier_itself_retry_and_the_range_waits(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    denied = RPCError("namespace default not found", RPCStatusCode.NOT_FOUND, b"")
    client = FakeClient([denied, denied, denied])
    result = await run_range(client)
    assert result.started == 3 and result.failed == 0
    assert len(sleeps) == 3
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, "logged once a minute, not per attempt"
    assert "cannot start workflows (NOT_FOUND" in errors[0].getMessage()
    assert f"{TOPIC}/0 [0..2] waits" in errors[0].getMessage()


class FoundClient(FakeClient):
    """A client whose every start finds the range an earlier run started, ending at ``last``."""

    def __init__(self, last: int) -> None:
        super().__init__([WorkflowAlreadyStartedError(WID, "ExportRange")])
        self.last = last

    def get_workflow_handle(self, workflow_id: str) -> Any:
        last = self.last

        class Description:
            async def memo_value(self, key: str, *, type_hint: type) -> int:
                assert key == "last_offset"
                return last

        class Handle:
            async def describe(self) -> Description:
                return Description()

        return Handle()


async def test_a_range_an_earlier_run_started_is_found_again_by_its_memo() -> None:
    client = FoundClient(last=1)
    result = await run_range(client)
    # [0..1] exists; [2..2] is started anew, under the ID of its own first offset.
    assert result == RangeHandOff(2, started=1, existing=2, skipped=0, failed=0)
    assert [call["id"] for call in client.calls] == [WID, WID.replace("/0/0/", "/0/2/")]


async def test_a_failed_range_of_the_most_records_stays_under_temporals_limit() -> None:
    offsets = list(range(10_000))
    failed = failed_range_input(RangeSpan("g", TOPIC, TOPIC_ID, 0, offsets), None, "x" * 2_001)
    assert [f.offset for f in failed.failed] == offsets
    client = FakeClient([])
    size = await handoff.encoded_size(client, failed)  # type: ignore[arg-type]
    assert size < CONFIG.temporal.max_input_bytes


# ------------------------------------------------------------------ the strategy in the loop
def batch_ingest(client: FakeClient, config: CourierConfig = CONFIG) -> tuple[Ingest, FakeConsumer]:
    ingest = Ingest(config, client)  # type: ignore[arg-type]
    fake = FakeConsumer({TP})
    ingest._consumer = fake  # type: ignore[assignment]
    ingest._topic_ids = FakeTopicIds({TOPIC: TOPIC_ID})  # type: ignore[assignment]
    ingest._checked = {TP: TOPIC_ID}
    return ingest, fake


async def test_a_failed_range_is_counted_and_the_partition_moves_on() -> None:
    client = FakeClient([ValueError("cannot encode this one")])
    ingest, fake = batch_ingest(client)
    assert isinstance(ingest.strategy, Ranges)
    fake.batches.append({TP: records(TP, range(6))})
    await ingest._poll_once(fake)  # [0..2] and [3..5], handed off one after the other
    await settle()
    for _ in range(3):
        ingest._dispatch()
        await settle()

    inputs = [call["args"][1] for call in client.calls]
    assert [(i.first_offset, i.last_offset, bool(i.slices)) for i in inputs] == [
        (0, 2, True),
        (0, 2, False),  # the failed range
        (3, 5, True),
    ]
    assert ingest.counts["failed"] == 3 and ingest.counts["started"] == 3
    assert ingest.hand_offs.in_flight == 0 and ingest.tracker.in_flight() == 0
    await ingest.commit()
    assert fake.commits == [{TP: 6}]


class _AsyncioWithoutSleep:
    """``asyncio`` as ``ingest.ranges`` sees it, with sleeps noted instead of waited."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)


async def test_an_error_escaping_the_range_hand_off_is_logged_retried_and_committed_past(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_asyncio = _AsyncioWithoutSleep()
    monkeypatch.setattr(ranges_module, "asyncio", fake_asyncio)
    real = ranges_module.hand_off_range
    calls = 0

    async def fails_once(*args: Any, **kwargs: Any) -> RangeHandOff:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the range hand-off")
        return await real(*args, **kwargs)

    monkeypatch.setattr(ranges_module, "hand_off_range", fails_once)
    client = FakeClient([])
    ingest, fake = batch_ingest(client)
    fake.batches.append({TP: records(TP, range(3))})
    with caplog.at_level(logging.ERROR, logger="courier.ingest"):
        await ingest._poll_once(fake)
        await settle()

    [logged] = [r for r in caplog.records if r.name == "courier.ingest"]
    assert logged.getMessage() == f"hand-off of {TOPIC}/0 [0..2] failed; retrying"
    assert logged.exc_info is not None and "a bug in the range" in str(logged.exc_info[1])
    assert fake_asyncio.slept == [1.0]
    assert calls == 2 and ingest.counts["started"] == 3
    assert ingest.hand_offs.in_flight == 0 and ingest.tracker.in_flight() == 0
    await ingest.commit()
    assert fake.commits == [{TP: 3}]


async def test_a_range_closes_at_max_bytes_and_a_bigger_record_gets_its_own() -> None:
    client = FakeClient([])
    ingest, fake = batch_ingest(client, batch_config(max_records=100, max_bytes=10))
    fetched = records(TP, range(9))  # 4 bytes each (key and value)...
    fetched[6] = dataclasses.replace(fetched[6], value=b"x" * 50, serialized_value_size=50)
    fake.batches.append({TP: fetched})
    await ingest._poll_once(fake)
    for _ in range(4):
        await settle()
        ingest._dispatch()

    ranges = [(call["args"][1].first_offset, call["args"][1].last_offset) for call in client.calls]
    # [7, 8] stays open: it is not full and has not waited max_wait (an hour) yet.
    assert ranges == [(0, 1), (2, 3), (4, 5), (6, 6)]
