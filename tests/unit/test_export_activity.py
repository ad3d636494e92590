"""The export activity maps destination errors to Temporal retry decisions."""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from datetime import timedelta

import pytest
from temporalio.activity import ActivityCancellationDetails
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter, DefaultFailureConverter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.base import Pace, no_pace
from activities.errors import PermanentExportError, RetryableExportError
from activities.export import ExportActivity
from activities.source import Fetched
from courier.core import metrics
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


def deep_error(error: type[RetryableExportError | PermanentExportError]) -> Exception:
    """``error`` raised from a chain of library errors with long stack traces (as httpx's)."""

    def fail(depth: int) -> None:
        if depth:
            fail(depth - 1)
        raise ConnectionError("All connection attempts failed")

    try:
        try:
            fail(60)
        except ConnectionError as low:
            raise OSError("connect failed") from low
    except OSError as err:
        try:
            raise error("token endpoint http://t/oauth/token could not be reached") from err
        except error as raised:
            return raised
    raise AssertionError("unreachable")


@pytest.mark.parametrize("error", [RetryableExportError, PermanentExportError])
async def test_a_failure_stays_small_however_long_its_cause_chain(
    error: type[RetryableExportError | PermanentExportError],
) -> None:
    # The server replaces a pending activity's last failure past its size limit with "Failure
    # exceeds size limit.": the reason must survive, so no chain of stack traces travels.
    activity = ExportActivity("dest", FakeDestination(deep_error(error)))
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activity.export, batch())
    failure = Failure()
    DefaultFailureConverter().to_failure(
        err.value, DataConverter.default.payload_converter, failure
    )
    assert failure.message == "token endpoint http://t/oauth/token could not be reached"
    assert not failure.HasField("cause"), failure.cause.message
    assert failure.ByteSize() < 4096, failure.ByteSize()


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
    assert warnings[0] == (
        "dest: the rest of an export goes out unpaced: pacing it at 1/s, the destination's "
        "rate_limit, would outlast half its attempt timeout (1s); raise timeouts.attempt or "
        "lower batch_size"
    )


async def test_pacing_by_rate_control_is_said_to_be_nothing_to_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="activities.export")
    activity = ExportActivity("dest", FakeDestination())
    activity.pacer.set_rate(1, "rate control (an open circuit's probes, or a rate lowered ...)")
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, start_to_close_timeout=timedelta(seconds=1))
    await env.run(activity.export, records(10))
    said = [r for r in caplog.records if r.name == "activities.export"]
    assert [r.levelname for r in said] == ["INFO"]
    assert "pacing it at 1/s, rate control (an open circuit's probes" in said[0].getMessage()
    assert said[0].getMessage().endswith("nothing to do: the batch was cut at a higher rate")


class FakeSource:
    """Kafka with some offsets gone: below ``log_start`` by retention, others by compaction."""

    def __init__(self, log_start: int, compacted: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.log_start = log_start
        self.compacted = compacted
        self.asked: list[list[int]] = []

    async def fetch(
        self, *, topic: str, topic_id: str, partition: int, offsets: Sequence[int]
    ) -> Fetched:
        self.asked.append(list(offsets))
        present = {
            o: KafkaRecord(topic, partition, o, Blob.of(f"k{o}".encode()), Blob.of(b"v"), 0)
            for o in offsets
            if o >= self.log_start and o not in self.compacted
        }
        reason = f"no longer in Kafka (retention: {topic}/{partition} now starts at offset "
        return Fetched(present, f"{reason}{self.log_start})", self.log_start)


class PartlyFailing(FakeDestination):
    """Answers 503 for the records whose offsets are in ``failing`` (once each)."""

    def __init__(self, failing: set[int]) -> None:
        super().__init__()
        self.failing = set(failing)
        self.sent: list[int] = []

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        self.sent += [item.record.offset for item in batch]
        failed = {item.record.offset for item in batch} & self.failing
        self.failing -= failed
        ok = [item for item in batch if item.record.offset not in failed]
        self.written += [item.idempotency_key for item in ok]
        if failed:
            error = RetryableExportError(f"{len(failed)} answered 503", cause="unavailable")
            error.confirmed = frozenset(item.idempotency_key for item in ok)
            raise error
        return f"{len(batch)} written"


def range_batch(offsets: Sequence[int]) -> RangeBatch:
    return RangeBatch("dest", "g", "t", "ID", 0, list(offsets))


async def test_a_retried_range_sends_only_the_records_without_a_confirmed_effect() -> None:
    destination = PartlyFailing(failing={3, 7})
    source = FakeSource(log_start=0)
    activity = ExportActivity("dest", destination, source)  # type: ignore[arg-type]
    env = ActivityEnvironment()
    beats: list[tuple[object, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    with pytest.raises(ApplicationError):
        await env.run(activity.export_range, range_batch(range(10)))
    assert beats[-1] == ({"confirmed_offsets": [0, 1, 2, 4, 5, 6, 8, 9]},)

    # The next attempt starts from the last heartbeat's details, as Temporal gives them.
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=list(beats[-1]))
    result = await env.run(activity.export_range, range_batch(range(10)))
    assert source.asked[-1] == [3, 7]  # confirmed records are not even read again
    assert destination.sent == [*range(10), 3, 7]
    assert (result.written, result.failed) == (10, [])


async def test_records_compacted_away_are_superseded_and_retention_is_named() -> None:
    destination = FakeDestination()
    source = FakeSource(log_start=3, compacted={5})
    activity = ExportActivity("dest", destination, source)  # type: ignore[arg-type]
    result = await ActivityEnvironment().run(activity.export_range, range_batch(range(8)))
    assert result.written == 4  # 3, 4, 6, 7
    assert [(f.offset, f.reason) for f in result.failed] == [
        (o, "no longer in Kafka (retention: t/0 now starts at offset 3)") for o in (0, 1, 2)
    ]
    assert result.detail == "4 written, 3 failed, 1 superseded (compacted away)"


async def test_a_record_compacted_away_before_it_was_read_is_not_exported() -> None:
    destination = FakeDestination()
    activity = ExportActivity("dest", destination, FakeSource(0, compacted={7}))  # type: ignore[arg-type]
    reference = dataclasses.replace(batch(), by_reference=True)
    reference = dataclasses.replace(
        reference,
        records=[
            dataclasses.replace(
                item, record=dataclasses.replace(item.record, topic_id="ID", value=None)
            )
            for item in reference.records
        ],
    )
    result = await ActivityEnvironment().run(activity.export, reference)
    assert destination.written == [] and result.written == 0
    assert result.detail == (
        "not exported: t/0/7 was compacted away before it was read (a later record of its key "
        "replaced it)"
    )


async def test_an_attempt_that_times_out_is_logged_and_counted_as_no_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    activity = ExportActivity("dest", SlowDestination())
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, start_to_close_timeout=timedelta(seconds=30))
    running = asyncio.create_task(env.run(activity.export, batch()))
    await asyncio.sleep(0.1)
    env.cancel(ActivityCancellationDetails(timed_out=True))
    with pytest.raises(asyncio.CancelledError):
        await running
    assert (activity.outcomes.unavailable, activity.outcomes.answered) == (1, 0)
    reason = "t/0/7: no answer within the attempt timeout (30s, timeouts.attempt)"
    assert activity.outcomes.last_error == reason
    said = [r.getMessage() for r in caplog.records if r.name == "activities.export"]
    assert said == [f"dest: attempt 1 timed out, will retry: {reason}"]


async def test_a_cancelled_attempt_is_no_timeout() -> None:
    activity = ExportActivity("dest", SlowDestination())
    env = ActivityEnvironment()
    running = asyncio.create_task(env.run(activity.export, batch()))
    await asyncio.sleep(0.1)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not activity.outcomes


def tombstone(offset: int) -> OutgoingRecord:
    return OutgoingRecord(f"courier/g/t/0/{offset}", KafkaRecord("t", 0, offset, None, None, 0))


async def test_tombstones_are_exported_unless_skipped() -> None:
    exporting = FakeDestination()
    result = await ActivityEnvironment().run(
        ExportActivity("dest", exporting).export, ExportBatch("dest", [tombstone(3)])
    )
    assert exporting.written == ["courier/g/t/0/3"] and result.written == 1

    skipping = FakeDestination()
    activity = ExportActivity("dest", skipping, skip_tombstones=True)
    result = await ActivityEnvironment().run(activity.export, ExportBatch("dest", [tombstone(3)]))
    assert skipping.written == [] and result.written == 0
    assert result.detail == "skipped: a tombstone (null value; tombstones: skip)"


class TombstoneSource(FakeSource):
    """Odd offsets are tombstones."""

    async def fetch(
        self, *, topic: str, topic_id: str, partition: int, offsets: Sequence[int]
    ) -> Fetched:
        fetched = await super().fetch(
            topic=topic, topic_id=topic_id, partition=partition, offsets=offsets
        )
        records = {
            o: dataclasses.replace(r, value=None) if o % 2 else r
            for o, r in fetched.records.items()
        }
        return dataclasses.replace(fetched, records=records)


async def test_a_range_skips_its_tombstones_when_told() -> None:
    destination = FakeDestination()
    activity = ExportActivity(
        "dest",
        destination,
        TombstoneSource(0),  # type: ignore[arg-type]
        skip_tombstones=True,
    )
    result = await ActivityEnvironment().run(activity.export_range, range_batch(range(6)))
    assert [k.rsplit("/", 1)[1] for k in destination.written] == ["0", "2", "4"]
    assert result.written == 3 and result.detail == "3 written, 0 failed, 3 tombstones skipped"
