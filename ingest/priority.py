"""The priority a record's workflow starts with on the shared workflow task queue.

Every destination's workflows share one workflow task queue. Two Temporal task-queue features
keep a destination from waiting behind another's workflow tasks there (per-record mode):

- **Fairness**: the record's destination is its fairness key, so the server dispatches the
  destinations' workflow tasks in turn instead of first in, first out — a burst for one
  destination no longer queues another's records behind it.
- **Priority**: a *congested* destination — one whose queue would make a new export wait longer
  than ``ingest.congested_after`` anyway (a backlog under its rate limit, an open circuit, no
  worker) — gets its records' workflows started at a lower priority. Their first workflow
  task only puts the export into that backlog, so running it later delays nothing, and the
  destinations that can take records now get the shared workflow workers first.

:class:`DestinationLoad` reads each destination queue's backlog and dispatch rate from the
server every ``REFRESH_S`` to know which are congested.
"""

from __future__ import annotations

import asyncio
import logging
import math

from temporalio.client import Client
from temporalio.common import Priority
from temporalio.service import RPCError

from courier.config.model import CourierConfig
from courier.core import metrics
from courier.core.task_queues import QueueState, describe

log = logging.getLogger("courier.ingest")

LOW_PRIORITY = 4
"""Priority key of a congested destination's records (the server's default is 3 of 1–5)."""
REFRESH_S = 2.0


def expected_wait(queue: QueueState) -> float:
    """Seconds a new export would wait in ``queue``: its backlog over the rate it drains at."""
    if queue.backlog <= 0:
        return 0.0
    rate = queue.dispatch_rate
    if queue.rate_limit is not None:
        rate = min(rate, queue.rate_limit) if rate > 0 else queue.rate_limit
    drain = queue.backlog / rate if rate > 0 else math.inf
    return max(drain, queue.backlog_age_s)


def record_priority(config: CourierConfig, destination: str | None, congested: bool) -> Priority:
    """The priority of a record's workflow: its destination's turn, lower when congested."""
    if not config.ingest.fairness or destination is None:
        return Priority.default
    return Priority(fairness_key=destination, priority_key=LOW_PRIORITY if congested else None)


class DestinationLoad:
    """Which destinations are congested, refreshed from the server while :meth:`run` runs."""

    def __init__(self, client: Client, config: CourierConfig) -> None:
        self.client = client
        self.threshold = config.ingest.congested_after.total_seconds()
        self.queues = {d.name: d.task_queue for d in config.destinations}
        self._congested: set[str] = set()

    def congested(self, destination: str | None) -> bool:
        """Whether ``destination``'s exports wait longer than the threshold right now."""
        return destination in self._congested

    async def run(self) -> None:
        """Refresh every ``REFRESH_S`` until cancelled; a failed read keeps the last view."""
        while True:
            await asyncio.gather(*(self._refresh(n, q) for n, q in self.queues.items()))
            await asyncio.sleep(REFRESH_S)

    async def _refresh(self, name: str, task_queue: str) -> None:
        try:
            wait = expected_wait(await describe(self.client, task_queue))
        except (RPCError, RuntimeError) as err:
            log.warning("cannot read the backlog of %s: %s", task_queue, err)
            return
        except Exception:  # a bug: say so, keep the last view
            log.exception("reading the backlog of %s failed", task_queue)
            return
        was = name in self._congested
        now = wait > self.threshold
        if now and not was:
            self._congested.add(name)
            log.info(
                "%s is congested (a new export would wait %s): its records' workflows start "
                "at low priority",
                name,
                "indefinitely" if math.isinf(wait) else f"~{wait:.0f}s",
            )
        elif was and not now:
            self._congested.discard(name)
            log.info("%s is no longer congested: its records start at normal priority", name)
        metrics.DESTINATION_CONGESTED.labels(name).set(1 if now else 0)
