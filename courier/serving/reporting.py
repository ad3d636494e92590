"""A worker's state of one destination, reported to the destination's ``DestinationState``.

"Connected", or "not connected: <reason>" while the worker retries opening the destination,
and "stopped" when it shuts down: ``courier status`` shows them from any machine, so an
operator sees why a destination's records wait. The workflow that keeps them is rate
control's (``courier.rate_control.workflow``); a report also starts it when it is not running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from temporalio.client import Client
from temporalio.service import RPCError

from courier.config.model import CourierConfig
from courier.rate_control.workflow import REPORT_SIGNAL, DestinationState, destination_state_id
from workflows.types import WorkerReport

log = logging.getLogger("courier.worker")

REPORT_INTERVAL_S = 30.0
"""How often a worker re-sends its state to the destination's ``DestinationState``."""


class StateReporter:
    """Sends one worker's state of one destination to its ``DestinationState`` workflow.

    Reporting is best effort: a failure is logged (once per cause, see ``courier.core.logs``) and
    never stops the worker.
    """

    def __init__(self, client: Client, config: CourierConfig, name: str) -> None:
        self.client = client
        self.name = name
        self.task_queue = config.destination(name).task_queue
        self.control_task_queue = config.temporal.control_task_queue
        self.identity = client.identity

    async def send(
        self, *, connected: bool, since: float, reason: str = "", stopped: bool = False
    ) -> None:
        """Signal (starting it if needed) the destination's state workflow."""
        report = WorkerReport(
            worker=self.identity,
            connected=connected,
            reason=reason,
            since=since,
            reported_at=time.time(),
            stopped=stopped,
        )
        try:
            await self.client.start_workflow(
                DestinationState.run,
                arg=[],
                id=destination_state_id(self.task_queue),
                task_queue=self.control_task_queue,
                start_signal=REPORT_SIGNAL,
                start_signal_args=[report],
                rpc_timeout=timedelta(seconds=5),
            )
        except (TimeoutError, RPCError, RuntimeError) as err:
            log.warning("%s: cannot report the worker's state to Temporal: %s", self.name, err)

    async def keep_connected(self, since: float) -> None:
        """Report "connected since ``since``" every ``REPORT_INTERVAL_S``, until cancelled."""
        while True:
            await self.send(connected=True, since=since)
            await asyncio.sleep(REPORT_INTERVAL_S)
