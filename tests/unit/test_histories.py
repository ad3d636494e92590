"""Histories recorded with earlier releases replay against today's workflow code.

``tests/histories/`` holds ``ExportRecord`` histories (exported, binary value, failed after
retries, unroutable) recorded with release 0.1.0, and ``ExportRange`` histories (exported,
partly failed) recorded when batch mode was added, an ``ExportRecord`` with a heartbeat timeout
and a ``DestinationState`` (workers reporting, then stopping) recorded when those were added,
and a re-driven ``ExportRecord`` carrying its record's own idempotency key; and the two runs of
an ``ExportKey`` (per-key ordering: records exported, one blocked, retried, skipped, continued
as new; the carried-over queue exported, then idle) recorded when it was added; and, recorded
when failed records got dead letters and batch-mode failures their own workflows: a range that
started its failed records' ``ExportRecord`` workflows and completed, such a record's first run
(dead-lettered, Failed) and its replayed run (exported), and a per-record export that failed
and was dead-lettered. (The replayed run's ``originalExecutionRunId`` is its own run ID: the
replayer takes a history's run ID from it, where a worker knows the run it serves, and the
workflow tells a replayed run by it.) A workflow change that would break workflows started by
those releases and still running fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from courier.rate_control.workflow import DestinationState
from workflows.export_key import ExportKey
from workflows.export_range import ExportRange
from workflows.export_record import ExportRecord

HISTORIES = sorted((Path(__file__).parents[1] / "histories").glob("*.json"))


def test_histories_are_present() -> None:
    assert len(HISTORIES) >= 15


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[ExportRecord, ExportRange, ExportKey, DestinationState])
    await replayer.replay_workflow(history)
