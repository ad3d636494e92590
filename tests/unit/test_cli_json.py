"""``--json`` of each command that prints a result, and ``courier --version``.

Commands that need no server run through the real CLI (typer's CliRunner); those that read
Temporal run their ops function with recording consoles, Temporal's answers replaced by fakes.
The shapes are the ones docs/cli-json.md documents.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import pytest
from rich.console import Console
from temporalio.client import Client, WorkflowExecution
from typer.testing import CliRunner

from courier.cli import app
from courier.config.model import CourierConfig, parse_config
from courier.core.output import Output, iso_time
from courier.core.task_queues import QueueState
from courier.ops import failures, limits, redrive, replay, show, status
from courier.ops.blocked import BlockedKey
from courier.ops.dead_letters import ReplaySummary
from courier.ops.dead_letters import replay_json as dead_letter_replay_json
from courier.rate_control.controller import ControlState
from ingest.dead_letter import DeadLetterEntry
from workflows.types import BlockedRecord, KeyState, WorkerReport

EXAMPLE = str(Path(__file__).parents[2] / "config" / "example.yaml")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
ANSI = "\x1b["
runner = CliRunner()


def recording() -> tuple[Output, io.StringIO, io.StringIO]:
    """An Output whose stdout and stderr are kept (an 80-column console, as in a pipe)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    out = Output(Console(file=stdout, width=80), Console(file=stderr, width=80, soft_wrap=True))
    return out, stdout, stderr


def small_config(**extra: Any) -> CourierConfig:
    return parse_config(
        {
            "kafka": {"topics": ["orders"], "group": "g"},
            "temporal": {"address": "127.0.0.1:7233"},
            "destinations": [
                {"name": "api", "kind": "rest", "url": "http://127.0.0.1:9/x", "rate_limit": 5},
                {"name": "keys", "kind": "file", "path": "/tmp/k.jsonl", "ordering": "key"},
            ],
            "routes": {"rules": [{"prefix": "k-", "destination": "keys"}], "default": "api"},
            **extra,
        },
        environ={},
    )


def test_version_prints_the_package_version() -> None:
    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0
        assert result.stdout == f"courier {version('courier')}\n"


def test_config_check_json_carries_the_table_and_routes() -> None:
    result = runner.invoke(app, ["config", "check", "-c", EXAMPLE, "--json"])
    assert result.exit_code == 0, result.output
    assert ANSI not in result.stdout
    checked = json.loads(result.stdout)
    assert checked["path"] == EXAMPLE and checked["valid"] is True
    by_name = {d["name"]: d for d in checked["destinations"]}
    assert list(by_name) == ["orders-api", "audit-api", "archive", "warehouse"]
    assert by_name["orders-api"] == {
        "name": "orders-api",
        "kind": "rest",
        "task_queue": by_name["orders-api"]["task_queue"],
        "rate_limit": 5.0,
        "max_concurrency": 4,
        "max_attempts": 0,
        "ordering": "none",
    }
    assert by_name["audit-api"]["rate_limit"] is None
    assert checked["routes"] == {
        "rules": [
            {"match": "prefix", "pattern": "order-", "destination": "orders-api"},
            {"match": "prefix", "pattern": "audit-", "destination": "audit-api"},
            {"match": "regex", "pattern": "event-[0-9]+", "destination": "warehouse"},
        ],
        "default": "archive",
        "unmatched": "fail",
    }
    assert checked["rate_limit_total"] == 205.0
    assert checked["unlimited_destinations"] == 2
    assert isinstance(checked["batch_advised"], bool) and isinstance(checked["warnings"], list)


def test_config_check_json_lists_the_warnings_it_also_prints(tmp_path: Path) -> None:
    path = tmp_path / "courier.yaml"
    path.write_text(
        "kafka: {topics: [orders], group: g}\n"
        "destinations:\n"
        "  - {name: out, kind: file, path: /tmp/out.jsonl, rate_limit: 50}\n"
        "  - {name: spare, kind: file, path: /tmp/spare.jsonl}\n"
        "routes: {rules: [{when: 'value.total > 10', destination: out}]}\n"
    )
    result = runner.invoke(app, ["config", "check", "-c", str(path), "--json"])
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)
    assert checked["routes"]["rules"] == [
        {"match": "when", "pattern": "value.total > 10", "destination": "out"}
    ]
    assert checked["batch_advised"] is True and checked["rate_limit_total"] == 50.0
    assert any("(spare): no route leads to it" in w for w in checked["warnings"])
    for warning in checked["warnings"]:
        assert f"warning: {warning}" in result.stderr


def test_config_check_json_of_a_bad_file_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(EXAMPLE).read_text().replace("rate_limit: 5", "rate_limit: fast"))
    result = runner.invoke(app, ["config", "check", "-c", str(bad), "--json"])
    assert result.exit_code == 2
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1


def test_route_json_names_destination_and_rule_with_the_exit_code(tmp_path: Path) -> None:
    result = runner.invoke(app, ["route", "order-17", "-c", EXAMPLE, "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "key": "order-17",
        "action": "export",
        "destination": "orders-api",
        "rule": "rule 1 (prefix 'order-')",
        "when_rules_skipped": False,
    }
    path = tmp_path / "courier.yaml"
    path.write_text(
        "kafka: {topics: [orders], group: g}\n"
        "destinations: [{name: out, kind: file, path: /tmp/out.jsonl}]\n"
        "routes: {rules: [{prefix: a-, destination: out}], unmatched: skip}\n"
    )
    nowhere = runner.invoke(app, ["route", "b-1", "-c", str(path), "--json"])
    assert nowhere.exit_code == 1
    decided = json.loads(nowhere.stdout)
    assert decided["action"] == "skip" and decided["destination"] is None


def test_map_json_is_the_preview(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"key": "x-1", "value": {"n": 1}, "topic": "t", "offset": 3}))
    result = runner.invoke(app, ["map", "-d", "archive", "--record", str(record), "-c", EXAMPLE])
    assert result.exit_code == 0, result.output
    as_json = runner.invoke(
        app, ["map", "-d", "archive", "--record", str(record), "-c", EXAMPLE, "--json"]
    )
    shown = json.loads(as_json.stdout)
    assert shown["destination"] == "archive" and shown["kind"] == "file"


def _status_report(now: float) -> status.StatusReport:
    queue = QueueState(
        task_queue="courier-api",
        backlog=7,
        backlog_age_s=12.5,
        dispatch_rate=4.75,
        workers=2,
        worker_identities=frozenset({"1@a", "2@b"}),
        rate_limit=5.0,
        rate_limit_source="worker",
    )
    api = status.DestinationStatus(
        name="api",
        queue=queue,
        running=7,
        completed=30,
        failed=2,
        workers=[
            WorkerReport("1@a", True, since=now - 60, reported_at=now - 5),
            WorkerReport("2@b", False, "connection refused", since=now - 30, reported_at=now),
        ],
        control=ControlState(mode="open", rate=0.2, since=now - 30, reason="5 failures"),
    )
    keys = status.DestinationStatus(
        name="keys",
        queue=QueueState("courier-keys", 0, 0.0, 0.0, 0, frozenset(), None, "none"),
        running=0,
        completed=0,
        failed=0,
    )
    blocked = BlockedKey(
        "courier/g/ordered/keys/key=k-1",
        KeyState(
            destination="keys",
            key="k-1",
            pending=3,
            exported=4,
            skipped=0,
            repeats=0,
            blocked=BlockedRecord("courier/g/orders@x/0/9", "orders", 0, 9, "HTTP 400", now - 90),
        ),
    )
    return status.StatusReport(
        destinations=[api, keys],
        oldest_failures={"api": now - 3600},
        retention_s=86400.0,
        ranges=status.RangeStatus(running=1, completed=2, failed=0, failed_records=0),
        ordered=[status.OrderedStatus("keys", active=1, blocked=[blocked], unanswered=1)],
        backlog_warnings=["api: backlog older than half the topic's retention"],
        failure_warnings=[],
    )


async def test_status_json_carries_the_table_and_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    report = _status_report(now)

    async def gather(client: Client, config: CourierConfig) -> status.StatusReport:
        return report

    monkeypatch.setattr(status, "gather", gather)
    config = small_config()
    out, stdout, stderr = recording()
    assert await status.command(cast(Client, None), config, out, as_json=True) == 0
    shown = json.loads(stdout.getvalue())
    assert ANSI not in stdout.getvalue()
    assert shown["temporal"] == {
        "address": "127.0.0.1:7233",
        "namespace": "default",
        "retention_s": 86400.0,
    }
    api, keys = shown["destinations"]
    assert (api["name"], api["workers"], api["backlog"], api["backlog_age_s"]) == (
        "api",
        2,
        7,
        12.5,
    )
    assert (api["running"], api["completed"], api["failed"]) == (7, 30, 2)
    assert (api["rate_limit"], api["rate_limit_source"]) == (5.0, "worker")
    assert api["connection"] == "not_connected" and api["workers_unknown"] is None
    assert [w["connected"] for w in api["worker_reports"]] == [True, False]
    assert api["worker_reports"][1]["reason"] == "connection refused"
    assert api["oldest_failure"] == iso_time(now - 3600)
    assert api["rate_control"]["mode"] == "open" and api["rate_control"]["rate"] == 0.2
    assert ISO_UTC.match(api["rate_control"]["since"])
    assert keys["connection"] == "no_worker" and keys["rate_limit"] is None
    assert keys["rate_control"]["mode"] == "normal" and keys["oldest_failure"] is None
    assert shown["ranges"] == {"running": 1, "completed": 2, "failed": 0, "failed_records": 0}
    [ordered] = shown["ordered"]
    assert (ordered["destination"], ordered["keys_in_flight"], ordered["unanswered"]) == (
        "keys",
        1,
        1,
    )
    [blocked] = ordered["blocked"]
    assert (blocked["key"], blocked["offset"], blocked["waiting"]) == ("k-1", 9, 2)
    assert blocked["record_id"] == "courier/g/orders@x/0/9" and ISO_UTC.match(blocked["since"])
    assert len(shown["warnings"]) == 2
    assert stderr.getvalue().count("warning: ") == 2

    text, text_out, text_err = recording()
    assert await status.command(cast(Client, None), config, text) == 0
    printed = text_out.getvalue()
    assert "api" in printed and "12s" in printed and "5/s worker" in printed
    assert "keys: ordered by key, 1 keys in flight, 2 blocked" in printed
    assert text_err.getvalue() == stderr.getvalue(), "the same warnings either way"


async def test_limit_json_says_the_limit_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    async def set_limit(*args: Any) -> QueueState:
        return QueueState("courier-api", 0, 0.0, 0.0, 1, frozenset({"w"}), 20.0, "override")

    monkeypatch.setattr(limits, "set_limit", set_limit)
    out, stdout, _ = recording()
    code = await limits.command(
        cast(Client, None), small_config(), "api", 20.0, "load test", out, as_json=True
    )
    assert code == 0
    assert json.loads(stdout.getvalue()) == {
        "destination": "api",
        "task_queue": "courier-api",
        "requested": 20.0,
        "reason": "load test",
        "rate_limit": 20.0,
        "rate_limit_source": "override",
    }


def _groups() -> list[failures.FailureGroup]:
    first = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    last = datetime(2026, 12, 7, 9, 5, 30, 250000, tzinfo=UTC)
    return [
        failures.FailureGroup(
            "api", "HTTP 503", 3, first, last, "wf-3", "orders/0/3", {"wf-1", "wf-2", "wf-3"}
        ),
        failures.FailureGroup("api", "HTTP 400", 1, last, last, "wf-3", "orders/0/4", {"wf-3"}),
    ]


def test_failures_json_has_the_groups_and_the_totals() -> None:
    shown = failures.failures_json(_groups())
    assert (shown["source"], shown["topic"], shown["records"], shown["workflows"]) == (
        "workflows",
        None,
        4,
        3,
    )
    groups = cast(list[dict[str, Any]], shown["groups"])
    assert groups[0] == {
        "destination": "api",
        "reason": "HTTP 503",
        "count": 3,
        "workflows": 3,
        "first_seen": "2026-12-07T09:00:00.000+00:00",
        "last_seen": "2026-12-07T09:05:30.250+00:00",
        "example_id": "wf-3",
        "example_record": "orders/0/3",
    }
    dead = failures.failures_json(_groups(), topic="dlq", repeats=2, foreign=1)
    assert (dead["source"], dead["topic"], dead["repeats"], dead["foreign"]) == (
        "dead_letter",
        "dlq",
        2,
        1,
    )


async def test_failures_command_json_without_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    async def none_found(*args: Any, **kwargs: Any) -> list[failures.FailedExport]:
        return []

    monkeypatch.setattr(failures, "find_failures", none_found)
    out, stdout, _ = recording()
    code = await failures.command(
        cast(Client, None), small_config(), destination=None, since=None, as_json=True, out=out
    )
    assert code == 0
    assert json.loads(stdout.getvalue()) == {
        "source": "workflows",
        "topic": None,
        "records": 0,
        "workflows": 0,
        "repeats": 0,
        "foreign": 0,
        "groups": [],
    }


class _Blocked:
    """A Temporal client listing no blocked keys."""

    def list_workflows(self, query: str) -> AsyncIterator[WorkflowExecution]:
        async def nothing() -> AsyncIterator[WorkflowExecution]:
            for execution in ():
                yield execution

        return nothing()


async def test_replay_json_reports_what_was_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    executions = [cast(WorkflowExecution, type("E", (), {"id": f"wf-{i}"})()) for i in range(3)]
    exports = [
        failures.FailedExport(
            execution=e,
            closed=datetime(2026, 12, 7, 9, i, tzinfo=UTC),
            records=[failures.FailedRecord("api", "HTTP 503", "HTTP 503", f"orders/0/{i}")],
        )
        for i, e in enumerate(executions)
    ]

    async def found(*args: Any, **kwargs: Any) -> list[failures.FailedExport]:
        return exports

    async def replay_all(client: Client, todo: list[Any], *, reason: str, on_done: Any) -> int:
        for execution in todo[:-1]:
            on_done(execution, None)
        on_done(todo[-1], RuntimeError("reset refused"))
        return 1

    monkeypatch.setattr(failures, "find_failures", found)
    monkeypatch.setattr(replay, "replay_all", replay_all)
    client = cast(Client, _Blocked())
    config = small_config()

    async def run(confirm: Any) -> tuple[int, dict[str, Any], str]:
        out, stdout, stderr = recording()
        code = await replay.command(
            client,
            config,
            destination=None,
            since=None,
            query=None,
            reason="test",
            confirm=confirm,
            out=out,
            as_json=True,
        )
        return code, json.loads(stdout.getvalue()), stderr.getvalue()

    code, shown, err = await run(None)
    assert code == 1, "one reset failed"
    assert (shown["source"], shown["failed_exports"], shown["blocked_keys"]) == ("workflows", 3, 0)
    assert (shown["selected"], shown["replayed"], shown["declined"]) == (3, 2, False)
    assert shown["errors"] == ["wf-2: reset refused"]
    assert err == "error: wf-2: reset refused\n"
    assert [g["count"] for g in shown["groups"]] == [3]

    asked: list[str] = []
    code, shown, _ = await run(lambda question: asked.append(question) or False)
    assert code == 1 and shown["declined"] is True and shown["replayed"] == 0
    assert asked == ["Replay these 3 failed export workflow(s)?"]


def test_dead_letter_replay_json() -> None:
    summary = ReplaySummary(run_id="r1", topic="dlq", dry_run=True, read=5, selected=4, started=3)
    summary.repeats = 1
    summary.missing.append("orders/0/1: gone (dlq/0/1)")
    entry = DeadLetterEntry(
        entry="dlq/0/2",
        topic="orders",
        partition=0,
        offset=2,
        topic_id="x",
        destination="api",
        workflow_id="wf-2",
        idempotency_key="wf-2",
        error_type="RetryableError",
        reason="HTTP 503",
        attempts=3,
        first_failure=None,
        last_failure=datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
        range_id=None,
        record_missing=None,
        key=b"k",
        value=b"v",
        headers=[],
        timestamp_ms=0,
    )
    summary.first.append((entry, "api"))
    shown = dead_letter_replay_json(summary, entries=6, declined=False)
    assert (shown["source"], shown["topic"], shown["run_id"], shown["dry_run"]) == (
        "dead_letter",
        "dlq",
        "r1",
        True,
    )
    assert (shown["entries"], shown["read"], shown["selected"], shown["replayed"]) == (6, 5, 4, 3)
    assert shown["missing"] == ["orders/0/1: gone (dlq/0/1)"] and shown["repeats"] == 1
    assert shown["first"] == [
        {
            "record": "orders/0/2",
            "destination": "api",
            "identity": "wf-2",
            "failed": "2026-12-07T09:00:00.000+00:00",
            "reason": "HTTP 503",
        }
    ]


class _Redrive:
    """A re-drive that plans one span and reads it at once."""

    def __init__(self, summary: redrive.RedriveSummary) -> None:
        self.summary = summary

    async def plan(self) -> list[redrive.Span]:
        self.summary.spans = [redrive.Span("orders", "x", 0, 0, 10)]
        return self.summary.spans

    async def run(self, on_read: Any = None) -> redrive.RedriveSummary:
        self.summary.read = self.summary.routed = self.summary.started = 10
        return self.summary


async def test_redrive_json_has_no_colour_on_a_terminal() -> None:
    summary = redrive.RedriveSummary(
        run_id="r1", destination="api", mode="per_record", dry_run=False, rate=None, notes=["n"]
    )
    stdout = io.StringIO()
    out = Output(Console(file=stdout, width=80, force_terminal=True), Console(file=io.StringIO()))
    await redrive.execute(cast(redrive.Redrive, _Redrive(summary)), out, as_json=True)
    assert ANSI not in stdout.getvalue(), "rich's print_json coloured it"
    shown = json.loads(stdout.getvalue())
    assert shown["notes"] == ["n"]
    assert (shown["read"], shown["started"], shown["rate"]) == (10, 10, None)
    assert shown["spans"] == [{"topic": "orders", "partition": 0, "start": 0, "end": 10}]


async def test_show_json_is_the_journey(monkeypatch: pytest.MonkeyPatch) -> None:
    journey = show.Journey(
        query="orders/0/1",
        coordinates="orders/0/1",
        workflow_id="wf-1",
        status="COMPLETED",
        started="2026-12-07T09:00:00.000+00:00",
    )

    async def found(client: Client, config: CourierConfig, target: str) -> show.Journey:
        return journey

    monkeypatch.setattr(show, "show", found)
    out, stdout, _ = recording()
    code = await show.command(
        cast(Client, None), small_config(), "orders/0/1", as_json=True, out=out
    )
    assert code == 0
    shown = json.loads(stdout.getvalue())
    assert (shown["coordinates"], shown["workflow_id"], shown["status"]) == (
        "orders/0/1",
        "wf-1",
        "COMPLETED",
    )
    assert "source" not in shown


def test_every_listed_command_takes_json() -> None:
    commands = [
        ["status"],
        ["config", "check"],
        ["route"],
        ["replay"],
        ["limit"],
        ["failures"],
        ["show"],
        ["redrive"],
        ["map"],
    ]
    for command in commands:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--json" in result.output, command
