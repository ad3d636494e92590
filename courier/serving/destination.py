"""Serving one destination in a worker process: open it with backoff, keep it served, close it.

:func:`serving` opens the destination (retrying with backoff, each failure reported, so its
records wait in Temporal instead of failing attempts) and, while the caller runs the worker of
its task queue, keeps three things going beside it: the worker's state report
(``courier.serving.reporting``), its pace (``courier.serving.pacing``) and, when configured,
rate control (``courier.rate_control.client``). On the way out it closes the destination and
reports the worker stopped. Which Temporal ``Worker`` polls the queue, and how it is tuned, is
``worker.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from temporalio.client import Client

from activities.base import Destination
from activities.errors import PermanentExportError, RetryableExportError
from activities.export import ExportActivity
from activities.formats import RecordDecoder
from activities.registry import create_destination
from activities.source import RecordSource
from courier.config.model import CourierConfig
from courier.core import metrics
from courier.rate_control.client import RateControl
from courier.serving.pacing import keep_pace, set_share
from courier.serving.reporting import StateReporter

log = logging.getLogger("courier.worker")


@contextlib.asynccontextmanager
async def serving(
    client: Client, config: CourierConfig, name: str, source: RecordSource
) -> AsyncIterator[ExportActivity]:
    """Open a destination (retrying), then keep it served while the caller runs its worker.

    Yields the destination's export activities once it is open. Until then its queue is not
    polled: the caller builds the worker inside the ``async with``.
    """
    dest_config = config.destination(name)
    reporter = StateReporter(client, config, name)
    destination = await open_destination(config, name, reporter)
    since = time.time()
    decoder = RecordDecoder.of(config.kafka.formats, config.kafka.schema_registry)
    try:
        activity = ExportActivity(
            name,
            destination,
            source,
            skip_tombstones=dest_config.tombstones == "skip",
            decoder=decoder,
        )
        metrics.DESTINATION_CONNECTED.labels(name).set(1)
        tasks = [asyncio.create_task(reporter.keep_connected(since))]
        # Pace from the first attempt: at a share of the rate among the workers already
        # polling (the configured rate if the server cannot say).
        activity.pacer.set_rate(dest_config.rate_limit)
        await set_share(client, dest_config.task_queue, activity.pacer, dest_config.rate_limit)
        tasks.append(
            asyncio.create_task(
                keep_pace(client, dest_config.task_queue, activity.pacer, dest_config.rate_limit)
            )
        )
        if dest_config.rate_control.circuit_breaker or dest_config.rate_control.adaptive:

            async def state_lost() -> None:
                await reporter.send(connected=True, since=since)

            control = RateControl(
                client,
                name=name,
                task_queue=dest_config.task_queue,
                configured_limit=dest_config.rate_limit,
                settings=dest_config.rate_control,
                outcomes=activity.outcomes,
                on_state_lost=state_lost,
            )
            tasks.append(asyncio.create_task(control.run()))
        try:
            yield activity
        finally:
            for task in tasks:
                task.cancel()
    finally:
        metrics.DESTINATION_CONNECTED.labels(name).set(0)
        await destination.close()
        if decoder is not None:
            await decoder.close()
        # Tell status this worker is gone; bounded, so a lost Temporal cannot hold up exit.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await reporter.send(connected=False, since=since, stopped=True)


async def open_destination(
    config: CourierConfig, name: str, reporter: StateReporter
) -> Destination:
    """Open a destination, retrying with backoff until it opens (or the task is cancelled).

    Each failed attempt is one log line and a "not connected" report; the process's other
    destinations keep running meanwhile.
    """
    dest_config = config.destination(name)
    timeout = config.workers.open_timeout.total_seconds()
    max_backoff = config.workers.open_max_backoff.total_seconds()
    since = time.time()
    delay = 1.0
    attempt = 0
    while True:
        attempt += 1
        destination = create_destination(dest_config)
        try:
            async with asyncio.timeout(timeout):
                await destination.open()
        except Exception as err:  # whatever the kind raises, the worker survives it
            with contextlib.suppress(Exception):
                await destination.close()
            reason = open_failure_reason(err, timeout)
            log.warning(
                "%s: cannot open the %s destination (attempt %d): %s; retrying in %.0fs, "
                "its records wait in Temporal",
                name,
                dest_config.kind,
                attempt,
                reason,
                delay,
                extra={"destination": name},
            )
            metrics.DESTINATION_CONNECTED.labels(name).set(0)
            await reporter.send(connected=False, since=since, reason=reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff)
            continue
        if attempt > 1:
            log.info("%s: destination open after %d attempts", name, attempt)
        return destination


def open_failure_reason(err: BaseException, timeout_s: float) -> str:
    """One line saying why a destination did not open."""
    if isinstance(err, (RetryableExportError, PermanentExportError)):
        return err.reason
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout_s:.0f}s (workers.open_timeout)"
    return f"{type(err).__name__}: {err}"
