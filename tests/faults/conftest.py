"""Fixtures and hooks of the fault suite: processes, a row per scenario, the results file.

The suite runs only when asked for: with a marker expression naming ``faults`` (``pytest -m
faults``) or a path inside ``tests/faults``; a plain ``pytest`` deselects it, because it stops
and starts services of the shared local stack and takes minutes (``make test`` runs it after
the rest of the suite).

Scenarios that restart a service of the stack (modules with ``RESTARTS_STACK = True``) run
after all others, so that a session disturbs other users of the stack as late as possible.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.faults import report
from tests.faults.ledger import FaultReceiver
from tests.faults.processes import Fleet

HERE = Path(__file__).parent
_ROWS = pytest.StashKey[list[report.Row]]()
_STARTED = pytest.StashKey[tuple[float, str]]()
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def _is_fault_test(item: pytest.Item) -> bool:
    return HERE in Path(str(item.fspath)).parents


def _asked_for(config: pytest.Config) -> bool:
    if "faults" in (config.option.markexpr or ""):
        return True
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _asked_for(config):
        skipped = [item for item in items if _is_fault_test(item)]
        if skipped:
            config.hook.pytest_deselected(items=skipped)
            items[:] = [item for item in items if not _is_fault_test(item)]
        return
    items.sort(
        key=lambda item: (
            _is_fault_test(item)
            and bool(getattr(getattr(item, "module", None), "RESTARTS_STACK", False))
        )
    )


def pytest_configure(config: pytest.Config) -> None:
    # Called as this conftest is registered (during collection, not at session start).
    config.stash[_ROWS] = []
    config.stash[_STARTED] = (time.monotonic(), datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    item.stash.setdefault(_REPORTS, {})[rep.when] = rep
    return rep


def _outcome(item: pytest.Item) -> str:
    reports = item.stash.get(_REPORTS, {})
    setup, call = reports.get("setup"), reports.get("call")
    if setup is not None and setup.failed:
        return "error"
    if call is None:
        return "skipped"
    if hasattr(call, "wasxfail"):
        return "xfailed" if call.skipped else "xpassed"
    return call.outcome


@pytest.fixture
def fault_row(request: pytest.FixtureRequest) -> Iterator[report.Row]:
    """This scenario's row of the matrix: the test fills it in, the session writes it out."""
    row = report.Row()
    started = time.monotonic()
    yield row
    if not row.scenario:
        return
    if not row.elapsed_s:
        row.elapsed_s = round(time.monotonic() - started, 1)
    row.outcome = _outcome(request.node)
    request.config.stash[_ROWS].append(row)


def pytest_sessionfinish(session: pytest.Session) -> None:
    rows = session.config.stash.get(_ROWS, [])
    if not rows:
        return
    began, started = session.config.stash[_STARTED]
    results = report.Results(
        rows=rows,
        started=started,
        duration_s=round(time.monotonic() - began, 1),
        cpus=os.cpu_count() or 0,
        revision=report.revision(),
    )
    path = report.save(results)
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"fault matrix results: {path}"]
    if results.complete():
        report.update_doc(results)
        lines.append(f"fault matrix table updated in {report.DOC}")
    if terminal is not None:
        terminal.write_line("")
        for line in lines:
            terminal.write_line(line)
        terminal.write_line(report.render(results))


@pytest.fixture
async def fleet(tmp_path: Path, temporal_client: Client) -> AsyncIterator[Fleet]:
    """This test's Courier processes; the ones still running at the end are stopped."""
    processes = Fleet(tmp_path, temporal_client)
    try:
        yield processes
    finally:
        await processes.close()


@pytest.fixture
async def receiver() -> AsyncIterator[FaultReceiver]:
    """A recording HTTP receiver on 127.0.0.1 (a free port)."""
    running = FaultReceiver()
    await running.start()
    try:
        yield running
    finally:
        await running.stop()
