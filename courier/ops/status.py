"""``courier status``: each destination's queue state and its workflows by outcome."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rich import box
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from courier.config.model import CourierConfig
from courier.core import search_attributes as sa
from courier.core.output import Output, iso_time
from courier.core.rates import format_rate
from courier.core.task_queues import QueueState, describe
from courier.ops.blocked import BlockedKey, blocked_keys
from courier.ops.retention import (
    failure_warnings,
    format_retention,
    namespace_retention_s,
    retention_warnings,
)
from courier.rate_control.controller import ControlState, describe_decision
from courier.rate_control.workflow import CONTROL_QUERY, WORKERS_QUERY, destination_state_id
from ingest.ranges import RECORDS_MEMO
from workflows.types import WorkerReport

STALE_AFTER_S = 100.0
"""A worker report older than this (workers re-send every 30 s) is not shown."""


@dataclass(frozen=True)
class DestinationStatus:
    """One destination as an operator sees it."""

    name: str
    queue: QueueState
    running: int
    completed: int
    failed: int
    workers: list[WorkerReport] = field(default_factory=list)
    """Recent reports of this destination's worker processes."""
    workers_unknown: str | None = None
    """Why the reports could not be read, if they could not."""
    control: ControlState | None = None
    """The destination's rate decision (circuit, adaptive rate), if its controller runs."""

    @property
    def rate_control(self) -> str:
        """``normal``, or e.g. ``circuit open since 12:03:04 UTC, probing every 5s; …``."""
        return describe_decision(self.control) if self.control is not None else "normal"

    @property
    def connection(self) -> str:
        """``connected``, ``not connected: <reason> (since …)`` or why it is unknown."""
        if self.workers_unknown is not None:
            return f"unknown: {self.workers_unknown}"
        if not self.workers:
            return "no worker"
        down = [w for w in self.workers if not w.connected]
        if not down:
            return "connected"
        first = min(down, key=lambda w: w.since)
        since = datetime.fromtimestamp(first.since, tz=UTC).strftime("%H:%M:%S")
        share = "" if len(down) == len(self.workers) else f" ({len(down)} of {len(self.workers)})"
        return f"not connected{share} since {since} UTC: {first.reason}"


async def worker_reports(
    client: Client, task_queue: str
) -> tuple[list[WorkerReport], ControlState | None]:
    """The recent reports of a destination's workers and its rate decision.

    Raises RPCError or WorkflowQueryFailedError when they cannot be read.
    """
    handle = client.get_workflow_handle(destination_state_id(task_queue))
    timeout = timedelta(seconds=5)
    try:
        description = await handle.describe(rpc_timeout=timeout)
        if description.status != WorkflowExecutionStatus.RUNNING:
            return [], None
        reports: list[WorkerReport] = await handle.query(
            WORKERS_QUERY, result_type=list[WorkerReport], rpc_timeout=timeout
        )
        control: ControlState = await handle.query(
            CONTROL_QUERY, result_type=ControlState, rpc_timeout=timeout
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return [], None
        raise
    horizon = time.time() - STALE_AFTER_S
    return [r for r in reports if r.reported_at >= horizon], control


async def range_records(client: Client, config: CourierConfig) -> dict[str, Counter[str]]:
    """Batch mode: the records of running and completed ranges, by status and destination.

    Each range's memo says how many of its records go to each destination (ranges started
    before it did are not counted).
    """
    query = (
        f"WorkflowType = 'ExportRange' AND TaskQueue = '{config.temporal.workflow_task_queue}' "
        "AND (ExecutionStatus = 'Running' OR ExecutionStatus = 'Completed')"
    )
    totals: dict[str, Counter[str]] = {"Running": Counter(), "Completed": Counter()}
    async for execution in client.list_workflows(query):
        counts: dict[str, int] = await execution.memo_value(
            RECORDS_MEMO, {}, type_hint=dict[str, int]
        )
        totals[execution.status.name.title() if execution.status else "Running"].update(counts)
    return totals


async def destination_statuses(client: Client, config: CourierConfig) -> list[DestinationStatus]:
    """The status of every configured destination, in config order.

    Its columns count records in both modes: workflows of records (``ExportRecord``), and in
    batch mode the records of its ranges (a record of a completed range that failed for good
    has a failed ``ExportRecord`` of its own, and counts as failed, not done).
    """
    result = []
    ranges = await range_records(client, config) if config.ingest.mode == "batch" else None
    for dest in config.destinations:
        queue = await describe(client, dest.task_queue)
        counts = await client.count_workflows(  # records' workflows, not ordered keys' or ranges'
            f"{sa.DESTINATION.name} = '{dest.name}' AND WorkflowType = 'ExportRecord' "
            "GROUP BY ExecutionStatus"
        )
        by_status = {str(g.group_values[0]): g.count for g in counts.groups}
        if ranges is not None:
            failed = by_status.get("Failed", 0)
            by_status["Running"] = by_status.get("Running", 0) + ranges["Running"][dest.name]
            done = ranges["Completed"][dest.name] - failed
            by_status["Completed"] = by_status.get("Completed", 0) + max(0, done)
        workers: list[WorkerReport] = []
        control = None
        unknown = None
        try:
            workers, control = await worker_reports(client, dest.task_queue)
        except (RPCError, WorkflowQueryFailedError) as err:
            unknown = f"no workflow worker answered ({err})"
        result.append(
            DestinationStatus(
                name=dest.name,
                queue=queue,
                running=by_status.get("Running", 0),
                completed=by_status.get("Completed", 0),
                failed=by_status.get("Failed", 0),
                workers=workers,
                workers_unknown=unknown,
                control=control,
            )
        )
    return result


@dataclass(frozen=True)
class RangeStatus:
    """Batch mode: the ``ExportRange`` workflows of this deployment's workflow queue."""

    running: int
    completed: int
    failed: int
    failed_records: int
    """Records of the failed ranges that could not be exported (``CourierFailedCount``)."""


async def range_status(client: Client, config: CourierConfig) -> RangeStatus:
    """Ranges by outcome, and how many records the failed ones could not export."""
    base = f"WorkflowType = 'ExportRange' AND TaskQueue = '{config.temporal.workflow_task_queue}'"
    counts = await client.count_workflows(f"{base} GROUP BY ExecutionStatus")
    by_status = {str(g.group_values[0]): g.count for g in counts.groups}
    failed_records = 0
    async for execution in client.list_workflows(f"{base} AND ExecutionStatus = 'Failed'"):
        failed_records += execution.typed_search_attributes.get(sa.FAILED_COUNT) or 0
    return RangeStatus(
        running=by_status.get("Running", 0),
        completed=by_status.get("Completed", 0),
        failed=by_status.get("Failed", 0),
        failed_records=failed_records,
    )


@dataclass(frozen=True)
class OrderedStatus:
    """A destination with ``ordering: key``: its keys in flight and the blocked ones."""

    name: str
    active: int
    """Keys whose ``ExportKey`` workflow runs (records queued, or idle for under a minute)."""
    blocked: list[BlockedKey]
    unanswered: int = 0
    """Keys visibility lists as blocked whose workflow did not answer (no workflow worker?)."""


async def ordered_statuses(client: Client, config: CourierConfig) -> list[OrderedStatus]:
    """The keys of every destination with ``ordering: key``, in config order."""
    result = []
    for dest in config.destinations:
        if dest.ordering != "key":
            continue
        active = await client.count_workflows(
            f"WorkflowType = 'ExportKey' AND ExecutionStatus = 'Running' "
            f"AND {sa.DESTINATION.name} = '{dest.name}'"
        )
        unanswered: list[str] = []
        blocked = await blocked_keys(client, dest.name, unanswered=unanswered)
        result.append(OrderedStatus(dest.name, active.count, blocked, len(unanswered)))
    return result


def describe_blocked(destination: str, blocked: BlockedKey) -> str:
    """One line: which key waits on which record since when, why, and what to do."""
    state, record = blocked.state, blocked.state.blocked
    if record is None:
        return f"{destination}: key {state.key!r} is not blocked"
    since = datetime.fromtimestamp(record.since, tz=UTC).strftime("%H:%M:%S")
    waiting = state.pending - 1
    return (
        f"{destination}: key {state.key!r} blocked since {since} UTC at "
        f"{record.topic}/{record.partition}/{record.offset}"
        f"{f' ({waiting} more records of the key wait)' if waiting else ''}: {record.reason} — "
        f"fix the cause and run courier replay -d {destination}, or courier skip "
        f"{record.idempotency_key}"
    )


def destinations_table(config: CourierConfig, statuses: list[DestinationStatus]) -> Table:
    """One row per destination: workers, backlog and its age, rate limit, workflows by status."""
    table = Table(
        title=f"Courier destinations on {config.temporal.address} ({config.temporal.namespace})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    columns = (
        "destination",
        "workers",
        "backlog",
        "oldest",
        "rate limit",
        "running",
        "done",
        "failed",
    )
    for column in columns:
        table.add_column(
            column, justify="left" if column == "destination" else "right", no_wrap=True
        )
    for dest in statuses:
        queue = dest.queue
        limit = format_rate(queue.rate_limit)
        if queue.rate_limit is not None:
            limit += f" {queue.rate_limit_source}"
        table.add_row(
            dest.name,
            str(queue.workers),
            str(queue.backlog),
            f"{queue.backlog_age_s:.0f}s" if queue.backlog else "-",
            limit,
            str(dest.running),
            str(dest.completed),
            str(dest.failed),
        )
    return table


OLDEST_FAILURE_SCAN = 1000
"""Failed workflows of a destination looked at for the oldest (a bound on status's time)."""


async def oldest_failure(client: Client, destination: str) -> float | None:
    """When the destination's oldest failed record's workflow closed (Unix time), if any."""
    query = (
        f"{sa.DESTINATION.name} = '{destination}' AND WorkflowType = 'ExportRecord' "
        "AND ExecutionStatus = 'Failed'"
    )
    oldest = None
    async for execution in client.list_workflows(query, limit=OLDEST_FAILURE_SCAN):
        closed = execution.close_time.timestamp() if execution.close_time else None
        if closed is not None and (oldest is None or closed < oldest):
            oldest = closed
    return oldest


def unanswered_warning(ordered: OrderedStatus) -> str:
    """The warning about an ordered destination's blocked keys that did not answer."""
    return (
        f"{ordered.name}: {ordered.unanswered} blocked key(s) did not answer; is a workflow "
        "worker (courier worker --workflows) running?"
    )


@dataclass(frozen=True)
class StatusReport:
    """Everything ``courier status`` prints, read once."""

    destinations: list[DestinationStatus]
    oldest_failures: dict[str, float]
    """Destination: when its oldest failed record's workflow closed (Unix time)."""
    retention_s: float | None
    """How long the namespace keeps closed workflows (None: unknown)."""
    ranges: RangeStatus
    ordered: list[OrderedStatus]
    backlog_warnings: list[str]
    """Backlogs older than half the topics' retention (or why it cannot be read)."""
    failure_warnings: list[str]
    """Failed records the namespace will forget before anyone replays them."""

    @property
    def warnings(self) -> list[str]:
        """Every warning, in the order the text prints them."""
        unanswered = [unanswered_warning(o) for o in self.ordered if o.unanswered]
        return [*self.backlog_warnings, *self.failure_warnings, *unanswered]


async def gather(client: Client, config: CourierConfig) -> StatusReport:
    """Read every destination's state, the ranges, ordered keys and what to warn about."""
    statuses = await destination_statuses(client, config)
    backlogs = [(d.name, d.queue.backlog_age_s) for d in statuses]
    backlog_warnings = await retention_warnings(config.kafka, backlogs)
    retention = await namespace_retention_s(client)
    oldest: dict[str, float] = {}
    for dest in statuses:
        if dest.failed:
            closed = await oldest_failure(client, dest.name)
            if closed is not None:
                oldest[dest.name] = closed
    failures = [(d.name, d.failed, oldest.get(d.name)) for d in statuses]
    return StatusReport(
        destinations=statuses,
        oldest_failures=oldest,
        retention_s=retention,
        ranges=await range_status(client, config),
        ordered=await ordered_statuses(client, config),
        backlog_warnings=backlog_warnings,
        failure_warnings=failure_warnings(config, retention, failures),
    )


def connection_state(dest: DestinationStatus) -> str:
    """``connected``, ``not_connected`` (some worker cannot open it), ``no_worker`` or
    ``unknown`` (the reports could not be read)."""
    if dest.workers_unknown is not None:
        return "unknown"
    if not dest.workers:
        return "no_worker"
    return "connected" if all(w.connected for w in dest.workers) else "not_connected"


def _control_dict(control: ControlState | None) -> dict[str, object]:
    if control is None:
        return {"mode": "normal", "rate": None, "since": None, "reason": "", "last_error": ""}
    return {
        "mode": control.mode,
        "rate": control.rate,
        "since": iso_time(control.since) if control.since else None,
        "reason": control.reason,
        "last_error": control.last_error,
        "configured_limit": control.configured_limit,
        "operator_limit": control.operator_limit,
        "draining": control.draining,
    }


def _blocked_dict(blocked: BlockedKey) -> dict[str, object]:
    state, record = blocked.state, blocked.state.blocked
    return {
        "key": state.key,
        "workflow_id": blocked.workflow_id,
        "record_id": record.idempotency_key if record else None,
        "topic": record.topic if record else None,
        "partition": record.partition if record else None,
        "offset": record.offset if record else None,
        "reason": record.reason if record else None,
        "since": iso_time(record.since) if record else None,
        "waiting": max(0, state.pending - 1),
    }


def report_json(config: CourierConfig, report: StatusReport) -> dict[str, object]:
    """The report for ``courier status --json`` (shape: docs/cli-json.md)."""
    destinations = []
    for dest in report.destinations:
        queue = dest.queue
        destinations.append(
            {
                "name": dest.name,
                "task_queue": queue.task_queue,
                "workers": queue.workers,
                "backlog": queue.backlog,
                "backlog_age_s": queue.backlog_age_s,
                "dispatch_rate": queue.dispatch_rate,
                "rate_limit": queue.rate_limit,
                "rate_limit_source": queue.rate_limit_source,
                "running": dest.running,
                "completed": dest.completed,
                "failed": dest.failed,
                "oldest_failure": iso_time(report.oldest_failures.get(dest.name)),
                "connection": connection_state(dest),
                "workers_unknown": dest.workers_unknown,
                "worker_reports": [
                    {
                        "worker": w.worker,
                        "connected": w.connected,
                        "reason": w.reason,
                        "since": iso_time(w.since),
                        "reported_at": iso_time(w.reported_at),
                    }
                    for w in dest.workers
                ],
                "rate_control": _control_dict(dest.control),
            }
        )
    ranges = report.ranges
    return {
        "temporal": {
            "address": config.temporal.address,
            "namespace": config.temporal.namespace,
            "retention_s": report.retention_s,
        },
        "ingest_mode": config.ingest.mode,
        "destinations": destinations,
        "ranges": {
            "running": ranges.running,
            "completed": ranges.completed,
            "failed": ranges.failed,
            "failed_records": ranges.failed_records,
        },
        "ordered": [
            {
                "destination": o.name,
                "keys_in_flight": o.active,
                "blocked": [_blocked_dict(b) for b in o.blocked],
                "unanswered": o.unanswered,
            }
            for o in report.ordered
        ],
        "warnings": report.warnings,
    }


def render(config: CourierConfig, report: StatusReport, out: Output) -> None:
    """The report for people: the table, each destination's problems, ranges, blocked keys;
    the warnings on stderr."""
    statuses = report.destinations
    out.out.print(destinations_table(config, statuses))
    for dest in statuses:
        if dest.connection != "connected":
            out.out.print(f"{dest.name}: {dest.connection}", highlight=False, markup=False)
        if dest.rate_control != "normal":
            out.out.print(f"{dest.name}: {dest.rate_control}", highlight=False, markup=False)
    for warning in report.backlog_warnings:
        out.warning(warning)
    out.out.print(
        f"namespace {config.temporal.namespace} keeps closed workflows "
        f"{format_retention(report.retention_s)}; failed records live on only in a dead-letter "
        "topic",
        highlight=False,
        markup=False,
    )
    for warning in report.failure_warnings:
        out.warning(warning)
    ranges = report.ranges
    if ranges.running or ranges.completed or ranges.failed:
        failed = (
            f", {ranges.failed} failed ({ranges.failed_records} records could not be exported)"
            if ranges.failed
            else ""
        )
        out.out.print(
            f"batch mode ranges: {ranges.running} running, {ranges.completed} done{failed}; "
            "a record that failed for good has its own Failed workflow (courier failures); "
            "per-destination record counts: the courier_records_exported metric"
        )
    for ordered in report.ordered:
        out.out.print(
            f"{ordered.name}: ordered by key, {ordered.active} keys in flight, "
            f"{len(ordered.blocked) + ordered.unanswered} blocked",
            highlight=False,
            markup=False,
        )
        for blocked in ordered.blocked:
            out.out.print(describe_blocked(ordered.name, blocked), highlight=False, markup=False)
        if ordered.unanswered:
            out.warning(unanswered_warning(ordered))


async def command(
    client: Client, config: CourierConfig, out: Output, *, as_json: bool = False
) -> int:
    """``courier status``: the destinations' table, their problems, batch ranges, blocked keys
    (or all of it as one JSON object, the warnings on stderr as well)."""
    report = await gather(client, config)
    if as_json:
        out.write_json(report_json(config, report))
        for warning in report.warnings:
            out.warning(warning)
    else:
        render(config, report, out)
    return 0
