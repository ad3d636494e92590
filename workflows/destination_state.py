"""The ``DestinationState`` workflow: what each worker process of a destination last reported.

One long-lived workflow per destination (ID :func:`destination_state_id`) collects the reports
that workers send with signal-with-start — "connected", or "not connected: <reason>" while a
worker retries opening its destination — so ``courier status`` can show, from any machine, why
a destination's records wait. It keeps the last report per worker, forgets workers silent for
:data:`FORGET_AFTER_S`, and continues as new before its history grows large.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.types import WorkerReport

REPORT_SIGNAL = "report"
WORKERS_QUERY = "workers"
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

    @workflow.run
    async def run(self, reports: list[WorkerReport]) -> None:
        """Collect reports until every worker stopped, or continue as new when the run is long."""
        for report in reports:
            self._reports[report.worker] = report
        await workflow.wait_condition(
            lambda: (
                (self._signals > 0 and not self._reports)
                or self._signals >= SIGNALS_PER_RUN
                or workflow.info().is_continue_as_new_suggested()
            )
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._reports:
            workflow.continue_as_new(list(self._reports.values()))

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

    @workflow.query(name=WORKERS_QUERY)
    def workers(self) -> list[WorkerReport]:
        """The latest report of every worker heard from recently."""
        return list(self._reports.values())
