"""A worker's outcome reports to rate control survive slow and failing answers (fake client)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

from courier.config.model import parse_config
from courier.rate_control import client as rate_control_client
from courier.rate_control.client import RateControl
from courier.rate_control.controller import ControlState
from courier.rate_control.outcomes import AttemptOutcomes

CONFIG = parse_config(
    {
        "kafka": {"topics": ["t"], "group": "g"},
        "destinations": [{"name": "api", "kind": "rest", "url": "http://127.0.0.1:9/x"}],
        "routes": {"default": "api"},
    },
    environ={},
)


class FakeHandle:
    """Answers updates with the scripted results (an exception is raised), in order."""

    def __init__(self, script: list[Any], outcomes: AttemptOutcomes) -> None:
        self.script = script
        self.outcomes = outcomes
        self.calls: list[tuple[str, Any]] = []

    async def execute_update(self, name: str, report: Any, **kwargs: Any) -> ControlState:
        self.calls.append((kwargs["id"], report))
        self.outcomes.unavailable += 5  # attempts go on failing meanwhile
        answer = self.script.pop(0) if self.script else ControlState()
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, ControlState)
        return answer


class FakeService:
    def __init__(self) -> None:
        self.rates: list[Any] = []

    async def update_task_queue_config(self, request: Any) -> None:
        self.rates.append(request.update_queue_rate_limit.rate_limit.requests_per_second)


class FakeClient:
    identity = "w1"
    namespace = "default"

    def __init__(self, handle: FakeHandle) -> None:
        self.handle = handle
        self.workflow_service = FakeService()

    def get_workflow_handle(self, workflow_id: str) -> FakeHandle:
        return self.handle


async def state_lost() -> None:
    raise AssertionError("the state workflow is not lost in these tests")


def rate_control(client: FakeClient, outcomes: AttemptOutcomes) -> RateControl:
    """The destination ``api``'s rate control over ``client`` (no state reporter)."""
    api = CONFIG.destination("api")
    return RateControl(
        client,  # type: ignore[arg-type]
        name="api",
        task_queue=api.task_queue,
        configured_limit=api.rate_limit,
        settings=api.rate_control,
        outcomes=outcomes,
        on_state_lost=state_lost,
    )


async def run_control(script: list[Any], monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    """Run rate control over one window of 5 refused attempts until the script is used up."""
    monkeypatch.setattr(rate_control_client, "CONTROL_INTERVAL_S", 0.0)
    outcomes = AttemptOutcomes(unavailable=5, last_error="refused")
    client = FakeClient(FakeHandle(script, outcomes))
    task = asyncio.create_task(rate_control(client, outcomes).run())
    for _ in range(200):
        await asyncio.sleep(0)
        if not client.handle.script and client.handle.calls:
            break
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return client


async def test_an_unanswered_report_is_sent_again_under_the_same_update_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened = ControlState(mode="open", rate=0.2, version=1)
    timeout = WorkflowUpdateRPCTimeoutOrCancelledError()
    client = await run_control([timeout, TimeoutError(), opened], monkeypatch)
    ids = [update_id for update_id, _ in client.handle.calls]
    assert len(set(ids[:3])) == 1  # one report, sent until answered (the server dedupes the ID)
    assert ids[3] != ids[0]  # then the outcomes that came meanwhile, as a new report
    assert client.handle.calls[0][1].unavailable == 5
    assert client.workflow_service.rates[0] == pytest.approx(0.2)  # the decision was applied


async def test_a_bug_answering_is_logged_and_rate_control_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    opened = ControlState(mode="open", rate=0.2, version=1)
    client = await run_control([ValueError("boom"), opened], monkeypatch)
    assert "sending attempt outcomes to rate control failed" in caplog.text
    first, second = client.handle.calls[:2]
    assert first[0] != second[0]  # the failed report was dropped; the next window went out
    assert client.workflow_service.rates[0] == pytest.approx(0.2)


async def test_cancelling_rate_control_ends_it_even_mid_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rate_control_client, "CONTROL_INTERVAL_S", 0.0)
    in_update = asyncio.Event()

    class SlowHandle(FakeHandle):
        async def execute_update(self, name: str, report: Any, **kwargs: Any) -> ControlState:
            in_update.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError as err:  # what the SDK does with a cancelled call
                raise WorkflowUpdateRPCTimeoutOrCancelledError() from err
            raise AssertionError("not reached")

    outcomes = AttemptOutcomes(unavailable=5)
    client = FakeClient(SlowHandle([], outcomes))
    task = asyncio.create_task(rate_control(client, outcomes).run())
    await asyncio.wait_for(in_update.wait(), 5)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.done(), "the cancellation was swallowed: rate control runs on"
    assert task.cancelled()


class ControllerHandle(FakeHandle):
    """A controller whose state is ``state``; counts the queries it answers."""

    def __init__(self, state: ControlState, outcomes: AttemptOutcomes) -> None:
        super().__init__([], outcomes)
        self.state = state
        self.queries = 0

    async def query(self, name: str, **kwargs: Any) -> ControlState:
        self.queries += 1
        return self.state


@pytest.mark.parametrize(
    ("state", "reported"),
    [
        (ControlState(mode="open", rate=0.2, version=3), True),  # opened before this worker
        (ControlState(mode="adaptive", rate=4.0, version=2), True),
        (ControlState(operator_limit=5.0), False),  # an operator's limit: nothing to decide
        (ControlState(), False),
    ],
)
async def test_a_worker_that_knows_no_decision_asks_the_controller_whether_one_is_in_force(
    state: ControlState, reported: bool
) -> None:
    outcomes = AttemptOutcomes()
    handle = ControllerHandle(state, outcomes)
    control = rate_control(FakeClient(handle), outcomes)
    answered = AttemptOutcomes(answered=1)
    assert control.mode == "normal"
    assert await control._worth_reporting(answered) is reported
    await control._worth_reporting(answered)
    # Seen without a decision, the controller is not asked again for a while.
    assert handle.queries == (2 if reported else 1)


async def test_a_closed_circuit_is_logged_at_once_as_its_own_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="courier.worker")
    outcomes = AttemptOutcomes()
    control = rate_control(FakeClient(FakeHandle([], outcomes)), outcomes)
    await control.apply(ControlState(mode="open", rate=0.2, version=1, last_error="503"))
    closed = "circuit closed after 40s, 8 probes"
    await control.apply(ControlState(mode="normal", version=2, reason=closed))
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "courier.worker"]
    assert lines[0][0] == "WARNING" and "circuit open since" in lines[0][1]
    assert lines[1] == ("INFO", f"api: {closed}")
