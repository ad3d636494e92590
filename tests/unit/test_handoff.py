"""The hand-off's failure contract, with a fake client (the real one: tests/integration)."""

from typing import Any

import pytest
from aiokafka import ConsumerRecord
from temporalio.common import WorkflowIDReusePolicy
from temporalio.converter import DataConverter
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from courier.config.model import parse_config
from ingest import handoff
from ingest.routing import Router
from workflows.types import ExportRecordInput

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
    """Records start_workflow calls and raises the scripted failures, in order."""

    def __init__(
        self, failures: list[Exception], converter: DataConverter = DataConverter.default
    ) -> None:
        self.failures = failures
        self.calls: list[dict[str, Any]] = []
        self.data_converter = converter

    async def start_workflow(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append({"args": args, **kwargs})
        if self.failures:
            raise self.failures.pop(0)


def unavailable() -> RPCError:
    return RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")


TOPIC_ID = "Fw0ygiNXSnSO1Fhrqe3sDw"
WID = f"courier/g/orders@{TOPIC_ID}/1/3"


async def run_hand_off(client: FakeClient, rec: ConsumerRecord) -> handoff.HandOff:
    decision = Router(CONFIG.routes).route(rec.key)
    return await handoff.hand_off(client, CONFIG, rec, TOPIC_ID, decision)  # type: ignore[arg-type]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(handoff.asyncio, "sleep", no_sleep)
    return slept


async def test_retries_while_temporal_is_unreachable(sleeps: list[float]) -> None:
    client = FakeClient([unavailable(), unavailable(), unavailable()])
    result = await run_hand_off(client, record(b"o-1"))
    assert result == handoff.HandOff(WID, started=True)
    assert len(client.calls) == 4 and sleeps == [0.5, 1.0, 2.0]
    call = client.calls[-1]
    assert call["id"] == WID
    assert call["id_reuse_policy"] == WorkflowIDReusePolicy.REJECT_DUPLICATE


async def test_an_existing_workflow_counts_as_handed_off() -> None:
    client = FakeClient([WorkflowAlreadyStartedError(WID, "ExportRecord")])
    result = await run_hand_off(client, record(b"o-1"))
    assert result.started is False and len(client.calls) == 1


def test_input_carries_the_policy_and_topic_id_not_the_secret() -> None:
    rec = record(b"o-1", b'{"a": 1}')
    built = handoff.build_input(rec, TOPIC_ID, Router(CONFIG.routes).route(rec.key), CONFIG)
    assert built.destination is not None and built.destination.task_queue == "courier-dest-api"
    assert built.record.value is not None and built.record.value.to_bytes() == b'{"a": 1}'
    assert built.record.topic_id == TOPIC_ID
    assert built.record.headers[0].name == "h"
    assert "s3cret" not in repr(built)


def test_unroutable_records_carry_a_readable_reason() -> None:
    rec = record(b"zzz")
    built = handoff.build_input(rec, TOPIC_ID, Router(CONFIG.routes).route(rec.key), CONFIG)
    assert built.destination is None and "key 'zzz' matches no rule" in (
        built.unroutable_reason or ""
    )


def failed_start(client: FakeClient) -> ExportRecordInput:
    """The input of the last start, which must be a coordinates-only failed hand-off."""
    built = client.calls[-1]["args"][1]
    assert isinstance(built, ExportRecordInput)
    assert built.record.value is None and built.record.key is None
    assert built.record.topic_id == TOPIC_ID and built.record.offset == 3
    return built


@pytest.mark.parametrize(
    "value",
    [bytes([0xFF]) * 1_700_000, b'"' * 1_200_000],
    ids=["binary-1.7MB-grows-under-base64", "quotes-1.2MB-double-under-escaping"],
)
async def test_a_record_over_the_encoded_limit_goes_by_reference(value: bytes) -> None:
    client = FakeClient([])
    result = await run_hand_off(client, record(b"o-1", value))
    assert result == handoff.HandOff(WID, started=True)
    built = client.calls[-1]["args"][1]
    assert isinstance(built, ExportRecordInput) and built.by_reference
    assert built.record.value is None and built.record.headers == []
    assert built.record.key is not None and built.record.key.text == "o-1"
    assert await handoff.encoded_size(client, built) < 2_000  # type: ignore[arg-type]


async def test_a_key_too_large_even_by_reference_gets_a_failed_workflow() -> None:
    client = FakeClient([])
    result = await run_hand_off(client, record(b"o-" + b"k" * 2_100_000))
    assert result.failed_reason is not None
    assert "its key of 2,100,002 bytes is too large" in result.failed_reason
    failed_start(client)


async def test_invalid_argument_gives_a_failed_workflow_without_the_key(
    sleeps: list[float],
) -> None:
    refused = RPCError("Blob data size exceeds limit.", RPCStatusCode.INVALID_ARGUMENT, b"")
    client = FakeClient([refused])
    result = await run_hand_off(client, record(b"o-1"))
    assert (
        result.failed_reason
        == "Temporal refused the record's workflow: Blob data size exceeds limit."
    )
    assert sleeps == []
    attributes = {p.key.name for p in client.calls[-1]["search_attributes"].search_attributes}
    assert "CourierKey" not in attributes and "CourierDestination" in attributes
    assert failed_start(client).hand_off_failure == result.failed_reason


class BrokenConverter(DataConverter):
    async def encode(self, values: Any) -> Any:
        raise ValueError("cannot encode this one")


async def test_an_encoding_error_gives_a_failed_workflow() -> None:
    client = FakeClient([], converter=BrokenConverter())
    result = await run_hand_off(client, record(b"o-1"))
    assert result.failed_reason == "cannot encode the record: ValueError: cannot encode this one"
    failed_start(client)


async def test_errors_about_courier_itself_retry_and_the_partition_waits(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    denied = RPCError("namespace default not found", RPCStatusCode.NOT_FOUND, b"")
    client = FakeClient([denied, denied, denied])
    result = await run_hand_off(client, record(b"o-1"))
    assert result == handoff.HandOff(WID, started=True)
    assert len(sleeps) == 3
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, "logged once a minute, not per attempt"
    assert "cannot start workflows (NOT_FOUND" in errors[0].getMessage()


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
