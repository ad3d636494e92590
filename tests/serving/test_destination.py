"""Serving a destination: whatever ends the worker, the destination is closed, the worker is
reported stopped and nothing it started beside the worker keeps running (fake client)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from temporalio.api.workflowservice.v1 import DescribeTaskQueueResponse

from activities.errors import RetryableExportError
from courier.config.model import parse_config
from courier.serving import destination as serving_module
from courier.serving.destination import open_failure_reason, serving
from workflows.types import OutgoingRecord, WorkerReport

CONFIG = parse_config(
    {
        "kafka": {"topics": ["t"], "group": "g"},
        "destinations": [
            {"name": "api", "kind": "rest", "url": "http://127.0.0.1:9/x", "rate_limit": 5}
        ],
        "routes": {"default": "api"},
    },
    environ={},
)


class FakeDestination:
    def __init__(self) -> None:
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Any = None) -> str:
        return ""

    async def close(self) -> None:
        self.closed = True


class FakeService:
    async def describe_task_queue(self, request: Any) -> DescribeTaskQueueResponse:
        return DescribeTaskQueueResponse()


class FakeClient:
    identity = "w1"
    namespace = "default"

    def __init__(self) -> None:
        self.workflow_service = FakeService()
        self.reports: list[WorkerReport] = []

    async def start_workflow(self, *args: Any, **kwargs: Any) -> None:
        self.reports.extend(kwargs["start_signal_args"])

    def get_workflow_handle(self, workflow_id: str) -> None:
        return None


@pytest.mark.parametrize("ending", [RuntimeError("the worker failed"), asyncio.CancelledError()])
async def test_serving_cleans_up_however_the_worker_ends(
    ending: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = FakeDestination()
    monkeypatch.setattr(serving_module, "create_destination", lambda config: destination)
    client = FakeClient()
    before = asyncio.all_tasks()
    with pytest.raises(type(ending)):
        async with serving(client, CONFIG, "api", source=None) as activity:  # type: ignore[arg-type]
            await asyncio.sleep(0)
            assert destination.opened and activity.destination is destination
            assert activity.pacer.rate == 5  # the one worker's share of the configured rate
            assert [r.connected for r in client.reports] == [True]
            raise ending
    await asyncio.sleep(0)
    assert destination.closed
    assert client.reports[-1].stopped and not client.reports[-1].connected
    assert asyncio.all_tasks() == before  # reporting, pacing and rate control ended


def test_open_failure_reason_says_why_in_one_line() -> None:
    assert open_failure_reason(RetryableExportError("refused"), 10) == "refused"
    timeout = open_failure_reason(TimeoutError(), 10)
    assert timeout == "no answer within 10s (workers.open_timeout)"
    assert open_failure_reason(OSError("boom"), 10) == "OSError: boom"
