"""Per-destination gauges read from Temporal by the process that runs ingest.

Every :data:`COLLECT_INTERVAL_S`, one ``DescribeTaskQueue`` per destination
(:func:`courier.core.task_queues.describe`, as ``courier status`` reads it) sets
``courier_destination_backlog_records``, ``courier_destination_oldest_pending_seconds``,
``courier_destination_workers`` and ``courier_destination_rate_limit``. A destination whose
queue cannot be read keeps its last values; each failure counts in
``courier_collect_errors_total{source="task_queue"}`` and is logged at most once a minute. Nothing
here stops ingest. Several ingest processes each report the same values (aggregate with ``max``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from temporalio.client import Client

from courier.config.model import CourierConfig
from courier.core import metrics
from courier.core.logs import Throttle
from courier.core.task_queues import QueueState, describe

log = logging.getLogger("courier.metrics")

COLLECT_INTERVAL_S = 15.0
"""How often the destinations' task queues are read."""
DESCRIBE_TIMEOUT_S = 10.0
"""The longest one destination's read may take."""

Describe = Callable[[Client, str], Awaitable[QueueState]]


def show(destination: str, queue: QueueState) -> None:
    """Set the destination's gauges from what the server reports of its queue."""
    metrics.DESTINATION_BACKLOG.labels(destination).set(queue.backlog)
    metrics.DESTINATION_OLDEST_PENDING.labels(destination).set(
        queue.backlog_age_s if queue.backlog > 0 else 0.0
    )
    metrics.DESTINATION_WORKERS.labels(destination).set(queue.workers)
    metrics.DESTINATION_RATE_LIMIT.labels(destination).set(queue.rate_limit or 0.0)


class DestinationCollector:
    """Reads every destination's task queue and publishes its gauges."""

    def __init__(
        self,
        client: Client,
        config: CourierConfig,
        *,
        interval_s: float = COLLECT_INTERVAL_S,
        describe_queue: Describe = describe,
    ) -> None:
        self.client = client
        self.queues = {d.name: d.task_queue for d in config.destinations}
        self.interval_s = interval_s
        self._describe = describe_queue
        self._errors = Throttle()

    async def collect(self) -> int:
        """Read each destination's queue once, side by side; how many reads failed."""
        results = await asyncio.gather(
            *(self._collect_one(name, queue) for name, queue in self.queues.items())
        )
        return results.count(False)

    async def _collect_one(self, name: str, task_queue: str) -> bool:
        try:
            async with asyncio.timeout(DESCRIBE_TIMEOUT_S):
                queue = await self._describe(self.client, task_queue)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # RPC errors, a timeout, anything: counted, never fatal
            metrics.COLLECT_ERRORS.labels("task_queue").inc()
            if self._errors.due():
                log.warning(
                    "cannot read the task queue %s of %s for its metrics (%s: %s); they keep "
                    "their last values (logged once a minute)",
                    task_queue,
                    name,
                    type(err).__name__,
                    err,
                )
            return False
        show(name, queue)
        return True

    async def run(self) -> None:
        """Collect every ``interval_s`` until cancelled."""
        while True:
            await self.collect()
            await asyncio.sleep(self.interval_s)
