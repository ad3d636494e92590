"""``courier failures``: failed records grouped by destination and reason.

Failed exports are the Failed ``ExportRecord`` and ``ExportRange`` runs of this deployment's
workflow queue that are still their workflow's latest run (a replayed run's old Failed run stays
listed in Temporal; it is not a failure any more). In batch mode a record that fails for good
has its own Failed ``ExportRecord``, as in per-record mode; a range that failed before that
(an earlier release) counts each of its failed records, from the list its failure carries.
Reasons are grouped with the record's coordinates and key replaced by ``{record}`` and
``{key}``, so one cause is one line however many records it hit; keys that are not in the
search attributes (records by reference of a range, encrypted payloads) are read from Kafka.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.table import Table
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecution, WorkflowHistoryEventFilterType
from temporalio.service import RPCError, RPCStatusCode

from courier.config.model import CourierConfig
from courier.core import search_attributes as sa
from courier.core.ids import parse_workflow_id
from courier.core.output import Output, iso_time
from ingest.fetch import KafkaRecordSource
from workflows.types import ExportRangeResult

LOOKUPS_IN_FLIGHT = 16
_RECORD_PREFIX = re.compile(r"^export of (?P<record>\S+/\d+/\d+) to \S+ failed: ")


def failed_query(
    config: CourierConfig,
    *,
    destination: str | None = None,
    since: timedelta | None = None,
    extra: str | None = None,
    now: datetime | None = None,
) -> str:
    """Visibility query of this deployment's Failed exports, with the operator's filters.

    With ``destination``, ranges that span several destinations are included too; their
    records are filtered by destination once read.
    """
    parts = [
        "WorkflowType IN ('ExportRecord', 'ExportRange')",
        "ExecutionStatus = 'Failed'",
        f"TaskQueue = '{config.temporal.workflow_task_queue}'",
    ]
    if destination:
        parts.append(
            f"({sa.DESTINATION.name} = '{destination}' OR (WorkflowType = 'ExportRange' AND "
            f"{sa.DESTINATION.name} = '(several)'))"
        )
    if since is not None:
        start = (now or datetime.now(UTC)) - since
        parts.append(f"CloseTime >= '{start.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}'")
    if extra:
        parts.append(f"({extra})")
    return " AND ".join(parts)


@dataclass(frozen=True)
class FailedRecord:
    """One record that failed for good."""

    destination: str
    reason: str
    """Grouping form: coordinates and key replaced."""
    message: str
    """The reason as the workflow gave it."""
    coordinates: str


@dataclass(frozen=True)
class FailedExport:
    """A Failed export run (its workflow's latest) and the records it failed."""

    execution: WorkflowExecution
    closed: datetime
    records: list[FailedRecord]


@dataclass
class FailureGroup:
    """Failed records of one destination with one reason."""

    destination: str
    reason: str
    count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    example_id: str = ""
    example_record: str = ""
    workflow_ids: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, object]:
        """The group for ``--json``."""
        return {
            "destination": self.destination,
            "reason": self.reason,
            "count": self.count,
            "workflows": len(self.workflow_ids),
            "first_seen": iso_time(self.first_seen),
            "last_seen": iso_time(self.last_seen),
            "example_id": self.example_id,
            "example_record": self.example_record,
        }


def generalise(message: str, coordinates: str, key: str | None) -> str:
    """A reason without what is particular to its record, for grouping."""
    reason = _RECORD_PREFIX.sub("", message)
    reason = reason.replace(coordinates, "{record}")
    if key and len(key) >= 2:
        reason = reason.replace(key, "{key}")
    return reason


async def find_failures(
    client: Client,
    config: CourierConfig,
    *,
    destination: str | None = None,
    since: timedelta | None = None,
    extra: str | None = None,
) -> list[FailedExport]:
    """This deployment's failed exports (latest runs only), with their failed records."""
    query = failed_query(config, destination=destination, since=since, extra=extra)
    executions = [e async for e in client.list_workflows(query)]
    slots = asyncio.Semaphore(LOOKUPS_IN_FLIGHT)
    source = KafkaRecordSource(config.kafka)

    async def look(execution: WorkflowExecution) -> FailedExport | None:
        async with slots:
            return await _failed_export(client, source, execution, destination)

    try:
        found = await asyncio.gather(*(look(e) for e in executions))
    finally:
        await source.close()
    return sorted((f for f in found if f is not None), key=lambda f: f.closed)


async def _keys_from_kafka(
    source: KafkaRecordSource, execution: WorkflowExecution, offsets: list[int]
) -> dict[int, str]:
    """The keys of a workflow's failed records, read from Kafka (none if it cannot be read)."""
    if not offsets:
        return {}
    try:
        parsed = parse_workflow_id(execution.id)
        fetched = await source.fetch(
            topic=parsed.topic,
            topic_id=parsed.topic_id,
            partition=parsed.partition,
            offsets=offsets,
        )
    except Exception:  # grouping is only less tidy without the keys
        return {}
    return {
        offset: record.key.to_bytes().decode("utf-8", errors="backslashreplace")
        for offset, record in fetched.records.items()
        if record.key is not None
    }


async def _failed_export(
    client: Client,
    source: KafkaRecordSource,
    execution: WorkflowExecution,
    destination: str | None,
) -> FailedExport | None:
    handle = client.get_workflow_handle(execution.id)
    try:
        latest = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None  # gone since listed (retention)
        raise
    if latest.run_id != execution.run_id:
        return None  # replayed since: a newer run exists
    failure = None
    async for event in client.get_workflow_handle(
        execution.id, run_id=execution.run_id
    ).fetch_history_events(event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT):
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            failure = event.workflow_execution_failed_event_attributes.failure
    if failure is None:
        return None
    attrs = execution.typed_search_attributes
    topic = attrs.get(sa.TOPIC) or "?"
    partition = attrs.get(sa.PARTITION)
    closed = execution.close_time or datetime.now(UTC)
    records: list[FailedRecord] = []
    if execution.workflow_type == "ExportRange":
        details = failure.application_failure_info.details.payloads
        result = None
        if details:
            [result] = await client.data_converter.decode(list(details), [ExportRangeResult])
        failed_here = [
            f
            for f in (result.failed if isinstance(result, ExportRangeResult) else [])
            if not destination or (f.destination or "(no route)") == destination
        ]
        keys = await _keys_from_kafka(source, execution, [f.offset for f in failed_here])
        for failed in failed_here:
            coordinates = f"{topic}/{partition}/{failed.offset}"
            reason = generalise(failed.reason, coordinates, keys.get(failed.offset))
            records.append(
                FailedRecord(failed.destination or "(no route)", reason, failed.reason, coordinates)
            )
    else:
        offset = attrs.get(sa.OFFSET)
        coordinates = f"{topic}/{partition}/{offset}"
        key = attrs.get(sa.RECORD_KEY)
        if key is None and offset is not None:
            key = (await _keys_from_kafka(source, execution, [offset])).get(offset)
        records.append(
            FailedRecord(
                attrs.get(sa.DESTINATION) or "(no route)",
                generalise(failure.message, coordinates, key),
                failure.message,
                coordinates,
            )
        )
    if not records:
        return None
    return FailedExport(execution=execution, closed=closed, records=records)


def group(failures: list[FailedExport]) -> list[FailureGroup]:
    """Failed records by destination and reason, the largest group first."""
    groups: dict[tuple[str, str], FailureGroup] = {}
    for export in failures:
        for record in export.records:
            entry = groups.setdefault(
                (record.destination, record.reason),
                FailureGroup(record.destination, record.reason),
            )
            entry.count += 1
            entry.workflow_ids.add(export.execution.id)
            if entry.first_seen is None or export.closed < entry.first_seen:
                entry.first_seen = export.closed
            if entry.last_seen is None or export.closed >= entry.last_seen:
                entry.last_seen = export.closed
                entry.example_id = export.execution.id
                entry.example_record = record.coordinates
    return sorted(groups.values(), key=lambda g: (-g.count, g.destination, g.reason))


def workflow_count(groups: list[FailureGroup]) -> int:
    """The workflows the groups' records failed in, each counted once."""
    return len(set().union(*(g.workflow_ids for g in groups))) if groups else 0


def failures_json(
    groups: list[FailureGroup],
    *,
    topic: str | None = None,
    repeats: int = 0,
    foreign: int = 0,
) -> dict[str, object]:
    """What ``courier failures --json`` prints (docs/cli-json.md): the groups and their totals.

    ``topic``: the dead-letter topic they were read from (None: Temporal's failed workflows);
    ``repeats``: its entries of a record counted already; ``foreign``: its records passed over.
    """
    return {
        "source": "workflows" if topic is None else "dead_letter",
        "topic": topic,
        "records": sum(g.count for g in groups),
        "workflows": workflow_count(groups),
        "repeats": repeats,
        "foreign": foreign,
        "groups": [g.as_dict() for g in groups],
    }


def render(groups: list[FailureGroup], console: Console) -> None:
    """Print the groups as a table, with a total."""
    table = Table("destination", "count", "first seen", "last seen", "reason", "example")
    for g in groups:
        table.add_row(
            g.destination,
            str(g.count),
            _short(g.first_seen),
            _short(g.last_seen),
            g.reason,
            f"{g.example_record}\n{g.example_id}",
        )
    console.print(table)
    records = sum(g.count for g in groups)
    console.print(
        f"{records} failed record(s) in {workflow_count(groups)} workflow(s)", highlight=False
    )


def _short(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


async def command(
    client: Client,
    config: CourierConfig,
    *,
    destination: str | None,
    since: timedelta | None,
    as_json: bool,
    out: Output,
) -> int:
    """``courier failures``: the groups as a table (or JSON), or that there are none."""
    groups = group(await find_failures(client, config, destination=destination, since=since))
    if as_json:
        out.write_json(failures_json(groups))
    elif not groups:
        out.out.print("no failed records")
    else:
        render(groups, out.out)
    return 0
