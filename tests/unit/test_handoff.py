"""The hand-off: retries while Temporal is unreachable; an existing workflow counts as done."""

from typing import Any

import pytest
from aiokafka import ConsumerRecord
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from courier.config import parse_config
from ingest import handoff
from ingest.routing import Router

CONFIG = parse_config(
    {
        "kafka": {"topics": ["orders"], "group": "g"},
        "destinations": [
            {
                "name": "api",
                "kind": "rest",
                "url": "http://127.0.0.1:9/x",
                "headers": {"Authorization": "Bearer ${TOKEN}"},
            }
        ],
        "routes": {"rules": [{"prefix": "o-", "destination": "api"}], "unmatched": "fail"},
    },
    environ={"TOKEN": "s3cret"},
)


def record(key: bytes | None, value: bytes = b"{}", offset: int = 3) -> ConsumerRecord:
    return ConsumerRecord(
        "orders",
        1,
        offset,
        1700000000000,
        0,
        key,
        value,
        None,
        len(key or b""),
        len(value),
        [("h", b"v")],
    )


class FakeClient:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls: list[dict[str, Any]] = []

    async def start_workflow(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append({"args": args, **kwargs})
        if self.failures:
            raise self.failures.pop(0)


def unavailable() -> RPCError:
    return RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")


async def test_retries_while_temporal_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    monkeypatch.setattr(handoff.asyncio, "sleep", no_sleep)
    client = FakeClient([unavailable(), unavailable(), unavailable()])
    rec = record(b"o-1")
    result = await handoff.hand_off(client, CONFIG, rec, Router(CONFIG.routes).route(rec.key))  # type: ignore[arg-type]
    assert result == handoff.HandOff("courier/g/orders/1/3", started=True)
    assert len(client.calls) == 4 and sleeps == [0.5, 1.0, 2.0]
    call = client.calls[-1]
    assert call["id"] == "courier/g/orders/1/3"
    assert call["id_reuse_policy"] == WorkflowIDReusePolicy.REJECT_DUPLICATE


async def test_an_existing_workflow_counts_as_handed_off() -> None:
    client = FakeClient([WorkflowAlreadyStartedError("courier/g/orders/1/3", "ExportRecord")])
    rec = record(b"o-1")
    result = await handoff.hand_off(client, CONFIG, rec, Router(CONFIG.routes).route(rec.key))  # type: ignore[arg-type]
    assert result.started is False and len(client.calls) == 1


def test_input_carries_the_policy_not_the_secret() -> None:
    rec = record(b"o-1", b'{"a": 1}')
    built = handoff.build_input(rec, Router(CONFIG.routes).route(rec.key), CONFIG)
    assert built.destination is not None and built.destination.task_queue == "courier-dest-api"
    assert built.record.value is not None and built.record.value.to_bytes() == b'{"a": 1}'
    assert built.record.headers[0].name == "h"
    assert "s3cret" not in repr(built)


def test_unroutable_and_oversized_records_carry_a_readable_reason() -> None:
    rec = record(b"zzz")
    built = handoff.build_input(rec, Router(CONFIG.routes).route(rec.key), CONFIG)
    assert built.destination is None and "key 'zzz' matches no rule" in (
        built.unroutable_reason or ""
    )
    huge = record(b"o-1", b"x" * (handoff.MAX_RECORD_BYTES + 1))
    built = handoff.build_input(huge, Router(CONFIG.routes).route(huge.key), CONFIG)
    assert built.destination is None and built.record.value is None
    assert "exceeds the 1,800,000-byte limit" in (built.unroutable_reason or "")


def test_search_attributes_name_the_record() -> None:
    rec = record(b"o-1")
    attrs = handoff.search_attributes(rec, Router(CONFIG.routes).route(rec.key))
    values = {pair.key.name: pair.value for pair in attrs.search_attributes}
    assert values == {
        "CourierTopic": "orders",
        "CourierPartition": 1,
        "CourierOffset": 3,
        "CourierDestination": "api",
        "CourierKey": "o-1",
    }
