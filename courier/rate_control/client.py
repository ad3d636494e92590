"""Rate control's worker side: report attempt outcomes, apply the decision to the queue.

One :class:`RateControl` task runs per destination in each worker process that serves it
(started by ``courier.serving.destination``). It never decides anything: the destination's
``DestinationState`` workflow does, for all its workers at once, and this client applies the
answer as the queue's server-side rate override, authored :data:`RATE_CONTROL_IDENTITY`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode

from courier.core import metrics
from courier.core.task_queues import set_rate_limit
from courier.rate_control.config import RateControlConfig
from courier.rate_control.controller import ControlState, OutcomeReport, describe_decision
from courier.rate_control.outcomes import AttemptOutcomes
from courier.rate_control.workflow import CONTROL_QUERY, OUTCOMES_UPDATE, destination_state_id

log = logging.getLogger("courier.worker")

RATE_CONTROL_IDENTITY = "courier rate control"
"""How a rate control decision's override names its author (followed by the worker's)."""
UPDATE_TIMEOUT_S = 5.0
"""Longest a worker waits for its destination's rate decision before moving on."""
CONTROL_INTERVAL_S = 1.0
"""How often a worker sends its attempt outcomes (if any) to its destination's rate control."""
CONTROLLER_CHECK_S = 5.0
"""How long a worker trusts having seen its destination's controller without a decision."""


class RateControl:
    """Sends one worker's attempt outcomes to the destination's controller; applies its decision.

    The decision (circuit open, adaptive rate) is the same for every worker of the destination;
    each applies it once as the queue's server-side rate limit, which is idempotent.
    ``on_state_lost`` starts the destination's state workflow again when it is gone.
    """

    def __init__(
        self,
        client: Client,
        *,
        name: str,
        task_queue: str,
        configured_limit: float | None,
        settings: RateControlConfig,
        outcomes: AttemptOutcomes,
        on_state_lost: Callable[[], Awaitable[None]],
    ) -> None:
        self.on_state_lost = on_state_lost
        self.client = client
        self.name = name
        self.outcomes = outcomes
        self.task_queue = task_queue
        self.configured_limit = configured_limit
        self.settings = settings
        self.handle = client.get_workflow_handle(destination_state_id(self.task_queue))
        self.applied_version = 0
        self.mode = "normal"
        self._failures_reported = False
        self._no_decision_seen_at = -CONTROLLER_CHECK_S

    async def run(self) -> None:
        """Report every ``CONTROL_INTERVAL_S`` while attempts happen, until cancelled.

        A report the controller did not answer in time is sent again, under the same update
        ID (the server runs an update ID once), until it is answered: outcomes are never lost
        and never counted twice. Nothing that goes wrong here ends the loop.
        """
        pending: tuple[str, OutcomeReport] | None = None
        while True:
            await asyncio.sleep(CONTROL_INTERVAL_S)
            if pending is None:
                if not self.outcomes:
                    continue
                window = self.outcomes.take()
                if not await self._worth_reporting(window):
                    continue
                pending = (uuid.uuid4().hex, self._report(window))
            try:
                decision = await self._send(*pending)
            except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
                if _being_cancelled():
                    raise asyncio.CancelledError from err  # the SDK turns it into its own error
                log.warning(
                    "%s: rate control did not answer within %.0fs (workflow workers busy or "
                    "none running); sending the same outcomes again",
                    self.name,
                    UPDATE_TIMEOUT_S,
                )
                continue
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    # The state workflow is gone (ended, or its start failed): start it again
                    # with this worker's state; the same report goes to the new run next.
                    await self.on_state_lost()
                else:
                    log.warning("%s: rate control unavailable: %s", self.name, err)
                continue
            except WorkflowUpdateFailedError as err:
                log.warning("%s: rate control refused the outcomes: %s", self.name, err)
                pending = None
                continue
            except Exception:  # a bug: say so, drop this report, keep controlling
                log.exception("%s: sending attempt outcomes to rate control failed", self.name)
                pending = None
                continue
            pending = None
            try:
                await self.apply(decision)
            except RPCError as err:  # applied with the next answer (its version is not yet)
                log.warning("%s: cannot set the queue's rate: %s", self.name, err)
            except Exception:
                log.exception("%s: applying the rate control decision failed", self.name)

    def _report(self, window: AttemptOutcomes) -> OutcomeReport:
        return OutcomeReport(
            worker=self.client.identity,
            window_s=time.monotonic() - window.started,
            answered=window.answered,
            unavailable=window.unavailable,
            throttled=window.throttled,
            not_reached=window.not_reached,
            last_error=window.last_error,
            configured_limit=self.configured_limit,
            circuit_breaker=self.settings.circuit_breaker,
            failure_threshold=self.settings.failure_threshold,
            probe_interval_s=self.settings.probe_interval.total_seconds(),
            adaptive=self.settings.adaptive,
        )

    async def _send(self, update_id: str, report: OutcomeReport) -> ControlState:
        # The SDK polls for an update's result until it has one: bound the wait here.
        async with asyncio.timeout(UPDATE_TIMEOUT_S):
            decision: ControlState = await self.handle.execute_update(
                OUTCOMES_UPDATE,
                report,
                id=update_id,
                result_type=ControlState,
                rpc_timeout=timedelta(seconds=UPDATE_TIMEOUT_S),
            )
        return decision

    async def _worth_reporting(self, window: AttemptOutcomes) -> bool:
        """Whether the controller needs this window: all answers while all is normal, no.

        Reporting costs a workflow task on the shared workflow queue, so a healthy destination
        reports nothing; answers are reported after failures (to reset the count) and while a
        decision is in force (to close the circuit or raise the rate). Whether one is in force
        is the controller's to say, not this worker's: a worker that joined while the circuit
        was open, or whose neighbour's failures opened it, has never been told. So the
        controller is asked (at most every ``CONTROLLER_CHECK_S`` while it has no decision in
        force) — not the queue, whose override a stopping worker may never have set.
        """
        if window.throttled or window.unavailable:
            self._failures_reported = True
            return True
        if self.mode != "normal" or self._failures_reported:
            self._failures_reported = False
            return True
        if time.monotonic() - self._no_decision_seen_at < CONTROLLER_CHECK_S:
            return False
        try:
            state: ControlState = await self.handle.query(
                CONTROL_QUERY,
                result_type=ControlState,
                rpc_timeout=timedelta(seconds=UPDATE_TIMEOUT_S),
            )
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:  # no controller: no decision
                self._no_decision_seen_at = time.monotonic()
                return False
            log.warning("%s: cannot ask rate control for its decision: %s", self.name, err)
            return True
        except Exception as err:  # e.g. no worker answered the query: report, as before
            log.warning("%s: cannot ask rate control for its decision: %s", self.name, err)
            return True
        if state.mode == "normal":
            self._no_decision_seen_at = time.monotonic()
            return False
        return True

    async def apply(self, decision: ControlState) -> None:
        """Set the queue's rate limit to the decision, once per decision."""
        if decision.version == self.applied_version:
            return
        line = describe_decision(decision)
        await set_rate_limit(
            self.client,
            self.task_queue,
            decision.rate,
            reason=f"courier rate control: {line}",
            identity=f"{RATE_CONTROL_IDENTITY} ({self.client.identity})",
        )
        self.applied_version = decision.version
        metrics.CIRCUIT_OPEN.labels(self.name).set(1 if decision.mode == "open" else 0)
        metrics.RATE_OVERRIDE.labels(self.name).set(decision.rate or 0)
        if self.mode == "open" and decision.mode != "open":
            # Its own event, at once: a recovery is no warning, and must not wait in the
            # summary of repeated warnings.
            log.info("%s: %s", self.name, decision.reason, extra={"destination": self.name})
        elif decision.mode != self.mode or (decision.mode == "adaptive" and "lowered" in line):
            log.warning("%s: %s", self.name, line, extra={"destination": self.name})
        self.mode = decision.mode


def _being_cancelled() -> bool:
    """Whether this task has a cancellation request pending: the SDK reports a cancelled update
    call as its own RPC error, which must then not be handled as a slow answer. (A timeout's
    own cancellation is withdrawn by ``asyncio.timeout`` before the error gets here.)"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
