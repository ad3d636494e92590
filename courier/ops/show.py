"""``courier show``: one record's journey, from Kafka through its workflow to its destination.

Given a workflow ID or ``TOPIC/PARTITION/OFFSET``, it finds the record's workflow (its own ID:
per-record mode, and in batch mode a record that failed for good; else the batch range that
holds the offset), reads the record
(from the workflow input when it travelled inline, else from Kafka), routes its key with the
current rules, and reads the workflow's history of every run (a replay starts a new run): each
export activity's attempts, the last error before each last attempt, how it ended, and the
receipt. Temporal keeps an activity's last failure and its attempt count, not every failed
attempt, so that is what is shown.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from courier.config.model import CourierConfig
from courier.core import search_attributes as sa
from courier.core.ids import ParsedId, parse_workflow_id, redrive_prefix, workflow_id
from courier.core.output import Output
from ingest.fetch import KafkaRecordSource
from ingest.kafka import KafkaUnreachable, check_brokers, consumer_options
from ingest.ranges import LAST_OFFSET_MEMO
from ingest.routing import Router
from ingest.topic_ids import TopicIds
from workflows.export_record import DEAD_LETTER_ACTIVITY
from workflows.types import (
    Blob,
    ExportRangeInput,
    ExportReceipt,
    ExportRecordInput,
    KafkaRecord,
    RangeBatch,
    RangeBatchResult,
)

_COORDINATES = re.compile(r"(?P<topic>[^/]+)/(?P<partition>\d+)/(?P<offset>\d+)")


class ShowError(Exception):
    """The record or workflow cannot be found; the message says why."""


@dataclass(frozen=True)
class Data:
    """A key, value or header value as shown: JSON, text, binary (hex dump) or null."""

    kind: str
    """``json``, ``text``, ``binary`` or ``null``."""
    text: str
    """Pretty JSON, the text, or a hex dump."""

    @staticmethod
    def of(blob: Blob | None) -> Data:
        """Render bytes: pretty JSON when they parse, text when UTF-8, else a hex dump."""
        if blob is None:
            return Data("null", "")
        raw = blob.to_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Data("binary", hexdump(raw))
        try:
            return Data("json", json.dumps(json.loads(text), indent=2, ensure_ascii=False))
        except ValueError:
            return Data("text", text)


def hexdump(data: bytes, width: int = 16) -> str:
    """``xxd``-style lines: offset, hex bytes, printable ASCII."""
    lines = []
    for start in range(0, len(data), width):
        chunk = data[start : start + width]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{start:08x}  {hexes:<{width * 3 - 1}}  {text}")
    return "\n".join(lines)


@dataclass(frozen=True)
class RecordView:
    """The record itself."""

    coordinates: str
    timestamp: str | None
    key: Data
    value: Data
    headers: list[tuple[str, Data]]
    source: str
    key_base64: str | None
    """The key's exact bytes (base64), None for a null key."""
    """``workflow input`` or ``Kafka``."""


@dataclass(frozen=True)
class Activity:
    """One export activity of a run: its attempts and how it ended."""

    run_id: str
    activity: str
    task_queue: str
    scheduled: str
    attempts: int
    last_attempt_started: str | None
    error_before_last_attempt: str | None
    outcome: str
    """``completed``, ``failed``, ``timed out``, ``running`` or ``scheduled``."""
    ended: str | None
    error: str | None
    detail: str | None
    next_attempt: str | None = None


@dataclass
class Journey:
    """Everything ``courier show`` prints."""

    query: str
    coordinates: str
    workflow_id: str | None = None
    run_id: str | None = None
    workflow_type: str | None = None
    status: str | None = None
    started: str | None = None
    closed: str | None = None
    record: RecordView | None = None
    record_problem: str | None = None
    route_now: str | None = None
    destination: str | None = None
    """The destination the record was handed off to (None: no route at hand-off)."""
    idempotency_key: str | None = None
    runs: int = 0
    activities: list[Activity] = field(default_factory=list)
    receipt: dict[str, Any] | None = None
    failure: str | None = None
    redrives: list[str] = field(default_factory=list)
    ui_url: str | None = None
    notes: list[str] = field(default_factory=list)
    source: KafkaRecord | None = field(default=None, repr=False)
    """The record as read (routing rules with ``when`` look at all of it); not shown."""

    def as_dict(self) -> dict[str, Any]:
        """The journey for ``--json``."""
        shown = asdict(self)
        del shown["source"]
        return shown


def ui_base(config: CourierConfig) -> str:
    """The Temporal UI's base URL: ``temporal.ui_url``, else the address's host on port 8233."""
    if config.temporal.ui_url:
        return config.temporal.ui_url.rstrip("/")
    host = config.temporal.address.rsplit(":", 1)[0]
    return f"http://{host}:8233"


def ui_link(config: CourierConfig, wid: str, run_id: str | None = None) -> str:
    """The Temporal UI page of a workflow (run)."""
    namespace = quote(config.temporal.namespace, safe="")
    path = f"{ui_base(config)}/namespaces/{namespace}/workflows/{quote(wid, safe='')}"
    return f"{path}/{run_id}/history" if run_id else path


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="milliseconds")


def _event_time(event: HistoryEvent) -> str:
    return _time(event.event_time.ToDatetime(tzinfo=UTC)) or ""


async def show(client: Client, config: CourierConfig, target: str) -> Journey:
    """The journey of the record named by a workflow ID or ``TOPIC/PARTITION/OFFSET``."""
    match = _COORDINATES.fullmatch(target)
    source = KafkaRecordSource(config.kafka)
    try:
        if match:
            topic, partition, offset = (
                match["topic"],
                int(match["partition"]),
                int(match["offset"]),
            )
            journey = Journey(query=target, coordinates=target)
            topic_id = await _topic_id(config, topic)
            parsed = ParsedId(config.kafka.group, topic, topic_id, partition, offset)
            wid: str | None = workflow_id(
                group=config.kafka.group,
                topic=topic,
                topic_id=topic_id,
                partition=partition,
                offset=offset,
            )
            if not await _exists(client, wid or ""):
                wid = await _range_holding(client, config, parsed)
        else:
            try:
                parsed = parse_workflow_id(target)
            except ValueError as err:
                raise ShowError(
                    f"{err}; or give the record as TOPIC/PARTITION/OFFSET, e.g. orders/0/17"
                ) from None
            if not await _exists(client, target):
                raise ShowError(
                    f"no workflow {target} in namespace {config.temporal.namespace} (closed "
                    "workflows are kept for the namespace's retention only); try "
                    f"{parsed.topic}/{parsed.partition}/{parsed.offset}"
                )
            wid = target
            journey = Journey(
                query=target, coordinates=f"{parsed.topic}/{parsed.partition}/{parsed.offset}"
            )
        if wid is None:
            journey.notes.append(
                "no workflow holds this record: not handed off yet, skipped (no route under "
                "unmatched: skip), or closed longer ago than the namespace's retention"
            )
        else:
            await _read_workflow(client, config, journey, wid, parsed.offset)
        if journey.record is None and journey.record_problem is None:
            await _record_from_kafka(source, journey, parsed)
        if journey.record is not None:
            raw = journey.record.key_base64
            key = None if raw is None else base64.b64decode(raw)
            journey.route_now = Router(config.routes).decide(key, journey.source).reason
        journey.redrives = await _redrives(client, config, parsed)
        return journey
    finally:
        await source.close()


def _view(record: KafkaRecord, source: str) -> RecordView:
    return RecordView(
        coordinates=f"{record.topic}/{record.partition}/{record.offset}",
        timestamp=_time(datetime.fromtimestamp(record.timestamp_ms / 1000, UTC))
        if record.timestamp_ms is not None and record.timestamp_ms >= 0
        else None,
        key=Data.of(record.key),
        key_base64=(
            None if record.key is None else base64.b64encode(record.key.to_bytes()).decode()
        ),
        value=Data.of(record.value),
        headers=[(h.name, Data.of(h.value)) for h in record.headers],
        source=source,
    )


async def _topic_id(config: CourierConfig, topic: str) -> str:
    try:
        await check_brokers(config.kafka)
    except KafkaUnreachable as err:
        raise ShowError(str(err)) from None
    consumer = AIOKafkaConsumer(group_id=None, **consumer_options(config.kafka, group=False))
    await consumer.start()
    try:
        found = (await TopicIds(consumer._client).refresh([topic])).ids.get(topic)
    finally:
        await consumer.stop()
    if found is None:
        raise ShowError(f"topic {topic} does not exist in Kafka")
    return found


async def _exists(client: Client, wid: str) -> bool:
    try:
        await client.get_workflow_handle(wid).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def _range_holding(client: Client, config: CourierConfig, parsed: ParsedId) -> str | None:
    """Batch mode: the ID of the range workflow (not a re-drive's) that holds the offset."""
    query = (
        f"WorkflowType = 'ExportRange' AND {sa.TOPIC.name} = '{parsed.topic}' AND "
        f"{sa.PARTITION.name} = {parsed.partition} AND {sa.OFFSET.name} <= {parsed.offset}"
    )
    own = f"courier/{parsed.group}/{parsed.topic}@{parsed.topic_id}/"
    async for execution in client.list_workflows(query):
        if not execution.id.startswith(own):
            continue
        last = await execution.memo_value(LAST_OFFSET_MEMO, None, type_hint=int)
        if last is not None and last >= parsed.offset:
            return execution.id
    return None


async def _redrives(client: Client, config: CourierConfig, parsed: ParsedId) -> list[str]:
    """Per-record re-drives of this record (their IDs), from any run."""
    query = (
        f"WorkflowId STARTS_WITH '{redrive_prefix(parsed.group)}' AND "
        f"{sa.TOPIC.name} = '{parsed.topic}' AND {sa.PARTITION.name} = {parsed.partition} AND "
        f"{sa.OFFSET.name} = {parsed.offset} AND WorkflowType = 'ExportRecord'"
    )
    found = {e.id async for e in client.list_workflows(query)}
    return sorted(found)


async def _record_from_kafka(source: KafkaRecordSource, journey: Journey, parsed: ParsedId) -> None:
    try:
        fetched = await source.fetch(
            topic=parsed.topic,
            topic_id=parsed.topic_id,
            partition=parsed.partition,
            offsets=[parsed.offset],
        )
    except Exception as err:  # a show must still print the rest
        journey.record_problem = f"cannot read it from Kafka: {err}"
        return
    record = fetched.records.get(parsed.offset)
    if record is None:
        journey.record_problem = fetched.missing
    else:
        journey.record, journey.source = _view(record, "Kafka"), record


async def _read_workflow(
    client: Client, config: CourierConfig, journey: Journey, wid: str, offset: int
) -> None:
    runs = [e async for e in client.list_workflows(f"WorkflowId = '{wid}'")]
    runs.sort(key=lambda e: e.start_time)
    journey.runs = len(runs)
    handle = client.get_workflow_handle(wid)
    latest = await handle.describe()
    journey.workflow_id = wid
    journey.run_id = latest.run_id
    journey.workflow_type = latest.workflow_type
    journey.status = latest.status.name if latest.status else None
    journey.started = _time(latest.start_time)
    journey.closed = _time(latest.close_time)
    journey.ui_url = ui_link(config, wid, latest.run_id)
    is_range = latest.workflow_type == "ExportRange"
    for run in runs or [latest]:
        history = await client.get_workflow_handle(wid, run_id=run.run_id).fetch_history()
        await _read_run(client, journey, run.run_id, history.events, offset, is_range)
    if latest.status == WorkflowExecutionStatus.RUNNING:
        _pending(journey, latest.raw_description.pending_activities, latest.run_id)


async def _decode(client: Client, payloads: Any, type_: type) -> Any:
    values = await client.data_converter.decode(list(payloads.payloads), [type_])
    return values[0] if values else None


async def _read_run(
    client: Client,
    journey: Journey,
    run_id: str,
    events: Sequence[HistoryEvent],
    offset: int,
    is_range: bool,
) -> None:
    scheduled: dict[int, tuple[HistoryEvent, bool]] = {}
    started: dict[int, HistoryEvent] = {}
    finished: set[int] = set()
    journey.failure = None
    for event in events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            payloads = event.workflow_execution_started_event_attributes.input
            if is_range:
                range_input: ExportRangeInput = await _decode(client, payloads, ExportRangeInput)
                _range_record(journey, range_input, offset)
            else:
                record_input: ExportRecordInput = await _decode(client, payloads, ExportRecordInput)
                _record_input(journey, record_input, run_id)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            mine = True
            if is_range:
                batch: RangeBatch = await _decode(client, attrs.input, RangeBatch)
                mine = offset in batch.offsets
            scheduled[event.event_id] = (event, mine)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs_s = event.activity_task_started_event_attributes
            started[attrs_s.scheduled_event_id] = event
        elif kind in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
        ):
            if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                done = event.activity_task_completed_event_attributes
                sched_id, outcome, error = done.scheduled_event_id, "completed", None
                sched = scheduled.get(sched_id)
                kind_name = (
                    sched[0].activity_task_scheduled_event_attributes.activity_type.name
                    if sched
                    else ""
                )
                detail = await _detail(client, done.result, is_range, offset, kind_name)
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
                failed = event.activity_task_failed_event_attributes
                sched_id, outcome, error = (
                    failed.scheduled_event_id,
                    "failed",
                    failed.failure.message,
                )
                detail = None
            else:
                timed = event.activity_task_timed_out_event_attributes
                sched_id, outcome = timed.scheduled_event_id, "timed out"
                error, detail = timed.failure.message or "timed out", None
            finished.add(sched_id)
            _add_activity(
                journey, run_id, scheduled, started, sched_id, outcome, event, error, detail
            )
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            result = event.workflow_execution_completed_event_attributes.result
            if not is_range:
                receipt: ExportReceipt = await _decode(client, result, ExportReceipt)
                journey.receipt = asdict(receipt)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            failure = event.workflow_execution_failed_event_attributes.failure
            journey.failure = failure.message
    for sched_id, (_, mine) in scheduled.items():
        if mine and sched_id not in finished:
            _add_activity(
                journey, run_id, scheduled, started, sched_id, "scheduled", None, None, None
            )


def _add_activity(
    journey: Journey,
    run_id: str,
    scheduled: dict[int, tuple[HistoryEvent, bool]],
    started: dict[int, HistoryEvent],
    sched_id: int,
    outcome: str,
    ended: HistoryEvent | None,
    error: str | None,
    detail: str | None,
) -> None:
    sched, mine = scheduled.get(sched_id, (None, False))
    if sched is None or not mine:
        return
    start = started.get(sched_id)
    attrs = start.activity_task_started_event_attributes if start is not None else None
    journey.activities.append(
        Activity(
            run_id=run_id,
            activity=sched.activity_task_scheduled_event_attributes.activity_type.name,
            task_queue=sched.activity_task_scheduled_event_attributes.task_queue.name,
            scheduled=_event_time(sched),
            attempts=attrs.attempt if attrs is not None else 0,
            last_attempt_started=_event_time(start) if start is not None else None,
            error_before_last_attempt=(
                attrs.last_failure.message
                if attrs is not None and attrs.HasField("last_failure")
                else None
            ),
            outcome=outcome,
            ended=_event_time(ended) if ended is not None else None,
            error=error,
            detail=detail,
        )
    )


def _pending(journey: Journey, pending: Any, run_id: str) -> None:
    """Running activities: attempt so far, last error and when, next attempt."""
    for info in pending:
        for index, activity in enumerate(journey.activities):
            if activity.run_id == run_id and activity.outcome == "scheduled":
                journey.activities[index] = Activity(
                    run_id=run_id,
                    activity=activity.activity,
                    task_queue=activity.task_queue,
                    scheduled=activity.scheduled,
                    attempts=info.attempt,
                    last_attempt_started=_time(info.last_started_time.ToDatetime(tzinfo=UTC))
                    if info.HasField("last_started_time")
                    else None,
                    error_before_last_attempt=info.last_failure.message
                    if info.HasField("last_failure")
                    else None,
                    outcome="running",
                    ended=None,
                    error=None,
                    detail=None,
                    next_attempt=_time(info.next_attempt_schedule_time.ToDatetime(tzinfo=UTC))
                    if info.HasField("next_attempt_schedule_time")
                    else None,
                )
                break


async def _detail(
    client: Client, result: Any, is_range: bool, offset: int, activity_type: str
) -> str | None:
    if activity_type == DEAD_LETTER_ACTIVITY:
        written: str = await _decode(client, result, str)
        return f"dead letter: {written}"
    if is_range:
        batch: RangeBatchResult = await _decode(client, result, RangeBatchResult)
        for failed in batch.failed:
            if failed.offset == offset:
                return f"this record failed: {failed.reason}"
        return batch.detail
    from workflows.types import ExportResult

    exported: ExportResult = await _decode(client, result, ExportResult)
    return exported.detail


def _record_input(journey: Journey, input: ExportRecordInput, run_id: str) -> None:
    if input.destination is not None:
        journey.destination = input.destination.name
    journey.idempotency_key = input.idempotency_key or journey.workflow_id
    if input.hand_off_failure is not None:
        journey.record_problem = f"never handed off: {input.hand_off_failure}"
        return
    failed = input.failed_in_range
    if failed is not None:
        note = (
            f"failed in batch range {failed.range_id}: {failed.reason} (the first run of the "
            "record's own workflow fails with it; courier replay exports the record alone)"
        )
        if note not in journey.notes:  # every run's history starts with the same input
            journey.notes.append(note)
    if input.by_reference:
        return  # read from Kafka afterwards
    journey.record, journey.source = _view(input.record, "workflow input"), input.record


def _range_record(journey: Journey, input: ExportRangeInput, offset: int) -> None:
    for piece in input.slices:
        if offset in piece.offsets:
            journey.destination = piece.destination.name
    for failed in input.failed:
        if failed.offset == offset:
            journey.notes.append(f"failed at ingest: {failed.reason}")
    journey.idempotency_key = workflow_id(
        group=input.group,
        topic=input.topic,
        topic_id=input.topic_id,
        partition=input.partition,
        offset=offset,
    )


def render(journey: Journey, console: Console) -> None:
    """Print a journey for people."""

    def line(label: str, value: object) -> None:
        console.print(
            Text.assemble((f"{label}: ", "bold"), str(value)), highlight=False, soft_wrap=True
        )

    def block(label: str, data: Data) -> None:
        if data.kind == "null":
            line(label, "(null)")
        elif "\n" in data.text or data.kind == "binary":
            line(label, f"({data.kind})")
            console.print(Text(data.text), highlight=False)
        else:
            line(label, f"{data.text}" + ("" if data.kind == "text" else f"  ({data.kind})"))

    line("record", journey.coordinates)
    record = journey.record
    if record is not None:
        if record.timestamp:
            line("timestamp", record.timestamp)
        block("key", record.key)
        for name, value in record.headers:
            block(f"header {name}", value)
        block("value", record.value)
        console.print(Text(f"(read from the {record.source})", style="dim"))
    elif journey.record_problem:
        line("record", journey.record_problem)
    if journey.route_now:
        line("route now", journey.route_now)
    for note in journey.notes:
        line("note", note)
    if journey.workflow_id is None:
        return
    line("workflow", f"{journey.workflow_type} {journey.workflow_id}")
    runs = f" ({journey.runs} runs: replayed)" if journey.runs > 1 else ""
    line("status", f"{journey.status}{runs}, started {journey.started}")
    line("destination", journey.destination or "(none: no route at hand-off)")
    if journey.idempotency_key:
        line("idempotency key", journey.idempotency_key)
    if journey.activities:
        table = Table("run", "attempts", "last attempt", "error before it", "outcome", "detail")
        for a in journey.activities:
            table.add_row(
                a.run_id[:8],
                str(a.attempts),
                a.last_attempt_started or "-",
                a.error_before_last_attempt or "-",
                f"{a.outcome} {a.ended or ''}".strip(),
                a.error or a.detail or (f"next attempt {a.next_attempt}" if a.next_attempt else ""),
            )
        console.print(table)
    if journey.receipt:
        line("receipt", ", ".join(f"{k}={v}" for k, v in journey.receipt.items()))
    if journey.failure:
        line("failure", journey.failure)
    for rid in journey.redrives:
        line("re-driven as", rid)
    if journey.ui_url:
        line("Temporal UI", journey.ui_url)


async def command(
    client: Client, config: CourierConfig, target: str, *, as_json: bool, out: Output
) -> int:
    """``courier show``: the journey for people (or as JSON), or why it cannot be shown."""
    try:
        journey = await show(client, config, target)
    except ShowError as err:
        return out.fail(str(err))
    if as_json:
        out.write_json(journey.as_dict())
    else:
        render(journey, out.out)
    return 0
