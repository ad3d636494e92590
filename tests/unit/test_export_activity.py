"""The export activity maps destination errors to Temporal retry decisions."""

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from datetime import timedelta

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.base import Pace, no_pace
from activities.errors import PermanentExportError, RetryableExportError
from activities.export import ExportActivity
from activities.source import Fetched
from courier import metrics
from workflows.types import Blob, ExportBatch, KafkaRecord, OutgoingRecord, RangeBatch


class FakeDestination:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.written: list[str] = []

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        if self.error:
            raise self.error
        await pace(len(batch))
        self.written += [item.idempotency_key for item in batch]
        return f"{len(batch)} written"


def batch(destination: str = "dest") -> ExportBatch:
    record = KafkaRecord("t", 0, 7, Blob.of(b"k"), Blob.of(b"v"), 0)
    return ExportBatch(destination, [OutgoingRecord("courier/g/t/0/7", record)])


async def test_success_returns_the_detail_and_counts() -> None:
    before = metrics.EXPORTED.labels("dest")._value.get()
    destination = FakeDestination()
    result = await ActivityEnvironment().run(ExportActivity("dest", destination).export, batch())
    assert (result.written, result.detail, result.attempt) == (1, "1 written", 1)
    assert destination.written == ["courier/g/t/0/7"]
    assert metrics.EXPORTED.labels("dest")._value.get() == before + 1


async def test_permanent_error_is_non_retryable_with_its_reason() -> None:
    activity = ExportActivity("dest", FakeDestination(PermanentExportError("answered 422")))
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activity.export, batch())
    assert err.value.non_retryable and err.value.type == "PermanentExportError"
    assert err.value.message == "answered 422"


async def test_retryable_error_carries_retry_after_as_next_delay() -> None:
    activity = ExportActivity("dest", FakeDestination(RetryableExportError("429", retry_after=2.0)))
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activity.export, batch())
    assert not err.value.non_retryable and err.value.type == "RetryableExportError"
    assert err.value.next_retry_delay == timedelta(seconds=2)


async def test_a_batch_for_another_destination_is_refused() -> None:
    destination = FakeDestination()
    with pytest.raises(ApplicationError, match="reached the worker of 'dest'") as err:
        await ActivityEnvironment().run(ExportActivity("dest", destination).export, batch("other"))
    assert err.value.non_retryable and destination.written == []


class SlowDestination(FakeDestination):
    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        await asyncio.sleep(0.5)
        return await super().write(batch, pace=pace)


async def test_an_unexpected_error_is_logged_counted_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unexpected = metrics.EXPORT_FAILURES.labels("dest", "unexpected")
    before = unexpected._value.get()
    activity = ExportActivity("dest", FakeDestination(KeyError("total")))
    for _ in range(2):
        with pytest.raises(ApplicationError) as err:
            await ActivityEnvironment().run(activity.export, batch())
        assert not err.value.non_retryable and err.value.type == "UnexpectedExportError"
        assert err.value.message == "unexpected KeyError: 'total'"
    assert unexpected._value.get() == before + 2
    errors = [r for r in caplog.records if r.name == "activities.export"]
    assert [r.getMessage() for r in errors] == [
        "dest: unexpected KeyError exporting t/0/7 (will retry; please report it): 'total'"
    ] * 2
    # The traceback is logged once per error type, not on every retry.
    assert errors[0].exc_info is not None and not errors[1].exc_info


async def test_a_long_export_heartbeats() -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(milliseconds=200))
    beats: list[float] = []
    env.on_heartbeat = lambda *_: beats.append(time.monotonic())
    started = time.monotonic()
    await env.run(ExportActivity("dest", SlowDestination()).export, batch())
    # Every 50 ms over 0.5 s; a generous bound that still fails without heartbeats.
    assert len(beats) >= 4, beats
    assert max(b - a for a, b in zip([started, *beats], beats, strict=False)) < 0.2


async def test_no_heartbeat_timeout_no_heartbeats() -> None:
    env = ActivityEnvironment()
    beats: list[object] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    await env.run(ExportActivity("dest", FakeDestination()).export, batch())
    assert beats == []


def records(n: int) -> ExportBatch:
    items = [
        OutgoingRecord(f"courier/g/t/0/{o}", KafkaRecord("t", 0, o, None, Blob.of(b"v"), 0))
        for o in range(n)
    ]
    return ExportBatch("dest", items)


async def test_records_wait_for_the_pace() -> None:
    activity = ExportActivity("dest", FakeDestination())
    activity.pacer.set_rate(20)
    started = time.monotonic()
    await ActivityEnvironment().run(activity.export, records(5))
    # Burst one: the first record goes at once, the others 50 ms apart.
    assert 0.18 <= time.monotonic() - started < 2


async def test_pacing_stops_at_half_the_attempt_timeout_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    destination = FakeDestination()
    activity = ExportActivity("dest", destination)
    activity.pacer.set_rate(1)  # 10 records would take 9 s
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, start_to_close_timeout=timedelta(seconds=1))
    started = time.monotonic()
    for _ in range(2):
        await env.run(activity.export, records(10))
    assert time.monotonic() - started < 2.5  # 0.5 s each, not 9 s
    assert len(destination.written) == 20
    warnings = [r.getMessage() for r in caplog.records if r.name == "activities.export"]
    assert len(warnings) == 1, warnings  # said once, not per attempt
    assert "faster than 1/s" in warnings[0] and "half its attempt timeout (1s)" in warnings[0]


class PartlyRefusing(FakeDestination):
    """Writes record by record, refusing keys in ``bad``; says which it wrote and refused."""

    def __init__(self, bad: set[str], tell: bool) -> None:
        super().__init__()
        self.bad, self.tell = bad, tell
        self.sent: list[str] = []

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        keys = [item.idempotency_key for item in batch]
        self.sent += keys
        refused = {k: f"{k} refused" for k in keys if k in self.bad}
        written = frozenset(k for k in keys if k not in self.bad)
        self.written += sorted(written)
        if refused:
            if not self.tell or len(batch) == 1:
                raise PermanentExportError(next(iter(refused.values())))
            raise PermanentExportError("some refused", written=written, refused=refused)
        return f"{len(batch)} written"


class Source:
    async def fetch(self, **kwargs: object) -> Fetched:
        offsets = list(kwargs["offsets"])  # type: ignore[call-overload]
        return Fetched(
            {o: KafkaRecord("t", 0, o, None, Blob.of(b"v"), 0, topic_id="ID") for o in offsets}, ""
        )


@pytest.mark.parametrize("tell", [True, False])
async def test_a_partly_refused_batch_sends_no_record_twice_when_the_destination_says(
    tell: bool,
) -> None:
    bad = {"courier/g/t@ID/0/3", "courier/g/t@ID/0/17"}
    destination = PartlyRefusing(bad, tell)
    activity = ExportActivity("dest", destination, Source())
    result = await ActivityEnvironment().run(
        activity.export_range, RangeBatch("dest", "g", "t", "ID", 0, list(range(20)))
    )
    assert (result.written, sorted(f.offset for f in result.failed)) == (18, [3, 17])
    assert {f.reason for f in result.failed} == {f"{k} refused" for k in bad}
    if tell:
        assert len(destination.sent) == 20, "each record sent once"
        assert len(destination.written) == 18
    else:  # split: the good halves are sent again (their idempotency keys make it harmless)
        assert len(destination.sent) > 20


class FlakyOnce(FakeDestination):
    """Writes record by record; ``flaky`` keys are unavailable on their first try."""

    def __init__(self, flaky: set[str]) -> None:
        super().__init__()
        self.flaky = set(flaky)
        self.sent: list[str] = []

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        keys = [item.idempotency_key for item in batch]
        self.sent += keys
        failing = self.flaky & set(keys)
        self.flaky -= failing
        written = frozenset(k for k in keys if k not in failing)
        self.written += sorted(written)
        if failing:
            raise RetryableExportError("503", cause="unavailable", written=written)
        return f"{len(batch)} written"


async def test_a_retried_range_sends_only_records_without_a_confirmed_effect() -> None:
    destination = FlakyOnce({"courier/g/t@ID/0/4"})
    activity = ExportActivity("dest", destination, Source())
    batch = RangeBatch("dest", "g", "t", "ID", 0, list(range(10)))
    env = ActivityEnvironment()
    beats: list[tuple[object, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    with pytest.raises(ApplicationError) as err:
        await env.run(activity.export_range, batch)
    assert err.value.type == "RetryableExportError"
    assert beats[-1] == ([0, 1, 2, 3, 5, 6, 7, 8, 9],), "the confirmed offsets, for the retry"

    # The retry (Temporal hands it the last heartbeat's details) sends the one record left.
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=list(beats[-1]))
    result = await env.run(activity.export_range, batch)
    assert (result.written, result.failed) == (10, [])
    assert destination.sent.count("courier/g/t@ID/0/4") == 2
    assert len(destination.sent) == 11 and len(destination.written) == 10
