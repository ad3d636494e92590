"""The ``DestinationState`` workflow: a destination's workers and its rate controller.

One long-lived workflow per destination (ID :func:`destination_state_id`):

- collects the reports that workers send with signal-with-start — "connected", or "not
  connected: <reason>" while a worker retries opening its destination — so ``courier status``
  can show, from any machine, why a destination's records wait;
- is the destination's rate controller: workers send the outcomes of their export attempts
  (update ``outcomes``) and get back the one decision for the whole cluster (circuit open,
  adaptive rate; see ``courier.rate_control.controller``), which they apply as the queue's
  rate limit; ``courier limit`` signals the operator's ceiling.

It keeps the last report per worker, forgets workers silent for :data:`FORGET_AFTER_S`, ends
when its last worker has stopped (unless it holds a rate decision or an operator's limit), and
continues as new before its history grows large.

Its registered name ``DestinationState`` and its signal, update and query names are in recorded
histories (``tests/histories/``) and in running workflows: they never change. The module lives
here, not in ``workflows/``, because it is rate control's; a workflow's module path is not part
of its history, so moving it changed nothing for the server. Its imports are passed through the
workflow sandbox; the package's ``__init__`` imports nothing, so loading the module in the
sandbox runs no worker-side code.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from courier.rate_control.controller import ControlState, OutcomeReport, RateController
    from workflows.types import WorkerReport

REPORT_SIGNAL = "report"
WORKERS_QUERY = "workers"
OUTCOMES_UPDATE = "outcomes"
CONTROL_QUERY = "control"
OPERATOR_LIMIT_SIGNAL = "operator_limit"
FORGET_AFTER_S = 600.0
SIGNALS_PER_RUN = 500


def destination_state_id(task_queue: str) -> str:
    """The workflow ID of a destination's state, from its (namespace-unique) task queue."""
    return f"courier-destination-state/{task_queue}"


@workflow.defn(name="DestinationState")
class DestinationState:
    """Holds the latest :class:`WorkerReport` of each worker of one destination."""

    def __init__(self) -> None:
        self._reports: dict[str, WorkerReport] = {}
        self._signals = 0
        self._control = RateController(ControlState())

    @workflow.run
    async def run(self, reports: list[WorkerReport], control: ControlState | None = None) -> None:
        """Collect reports until every worker stopped, or continue as new when the run is long."""
        for report in reports:
            self._reports[report.worker] = report
        if control is not None:
            self._control.state = control
        await workflow.wait_condition(
            lambda: (
                (self._signals > 0 and not self._reports and self._control_is_default())
                or self._signals >= SIGNALS_PER_RUN
                or workflow.info().is_continue_as_new_suggested()
            )
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._reports or not self._control_is_default():
            workflow.continue_as_new(args=[list(self._reports.values()), self._control.state])

    @workflow.signal(name=REPORT_SIGNAL)
    def report(self, report: WorkerReport) -> None:
        """Record one worker's state; a worker that stopped is forgotten."""
        self._signals += 1
        if report.stopped:
            self._reports.pop(report.worker, None)
        else:
            self._reports[report.worker] = report
        horizon = workflow.now() - timedelta(seconds=FORGET_AFTER_S)
        for worker, seen in list(self._reports.items()):
            if seen.reported_at < horizon.timestamp():
                del self._reports[worker]

    def _control_is_default(self) -> bool:
        state = self._control.state
        return state.mode == "normal" and state.operator_limit is None

    @workflow.update(name=OUTCOMES_UPDATE)
    def outcomes(self, report: OutcomeReport) -> ControlState:
        """Take one worker's attempt outcomes; return the destination's rate decision."""
        self._signals += 1
        self._control.observe(report, workflow.now().timestamp())
        return self._control.state

    @workflow.signal(name=OPERATOR_LIMIT_SIGNAL)
    def operator_limit(self, rate: float | None) -> None:
        """``courier limit``: the ceiling of the rate (None: the configured limit again)."""
        self._signals += 1
        self._control.set_operator_limit(rate, workflow.now().timestamp())

    @workflow.query(name=CONTROL_QUERY)
    def control(self) -> ControlState:
        """The destination's current rate decision."""
        return self._control.state

    @workflow.query(name=WORKERS_QUERY)
    def workers(self) -> list[WorkerReport]:
        """The latest report of every worker heard from recently."""
        return list(self._reports.values())
