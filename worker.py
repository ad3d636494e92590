"""Courier's Temporal workers: one destination's activity queue, the workflow queue, or all.

``courier worker`` (see ``courier worker --help``) runs them. Several processes serving one
destination share its task queue, and the Temporal server holds them together to its rate limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import CustomSlotSupplier, FixedSizeSlotSupplier, Worker, WorkerTuner

from activities.base import Destination
from activities.errors import PermanentExportError, RetryableExportError
from activities.export import AttemptOutcomes, ExportActivity
from activities.pacing import PACED_SLOTS, PacedSlots, Pacer
from activities.registry import create_destination
from activities.source import RecordSource
from courier import metrics
from courier.config import CourierConfig
from courier.rates import format_rate
from courier.task_queues import RATE_CONTROL_IDENTITY, describe, rate_controlled, set_rate_limit
from ingest.dead_letter import DeadLetters
from ingest.fetch import KafkaRecordSource
from workflows.destination_state import (
    OUTCOMES_UPDATE,
    REPORT_SIGNAL,
    DestinationState,
    destination_state_id,
)
from workflows.export_key import ExportKey
from workflows.export_range import ExportRange
from workflows.export_record import ExportRecord
from workflows.rate_control import describe_decision
from workflows.types import ControlState, OutcomeReport, WorkerReport

log = logging.getLogger("courier.worker")


def control_worker(client: Client, config: CourierConfig) -> Worker:
    """The worker of the DestinationState workflows, on their own queue.

    Every worker process runs one, so a destination's rate control is answered by whichever
    process is free, not only by the workflow worker, which is the busiest at saturation.
    Nothing is cached (no sticky queue ties a state workflow to one busy process); its history
    is short, so replaying it per task is cheap.
    """
    return Worker(
        client,
        task_queue=config.temporal.control_task_queue,
        workflows=[DestinationState],
        max_concurrent_workflow_task_polls=2,
        max_cached_workflows=0,
    )


def workflow_worker(
    client: Client, config: CourierConfig, activities: Sequence[Callable[..., Any]] = ()
) -> Worker:
    """The worker of the export workflows, ordered keys' included (eager activities off), and
    of ``activities`` that must not run on a destination's queue (the dead letters)."""
    return Worker(
        client,
        task_queue=config.temporal.workflow_task_queue,
        # DestinationState too: runs started before it had its own queue continue here.
        workflows=[ExportRecord, ExportRange, ExportKey, DestinationState],
        activities=activities,
        # Eager activities would run on this worker, bypassing the destination's queue limit.
        disable_eager_activity_execution=True,
        max_concurrent_workflow_tasks=200,
        # Export workflows are short: half their workflow tasks are a new workflow's first, from
        # the normal queue, half come back on the sticky queue. The SDK's default (5 polls,
        # ratio 0.2) leaves one poller on the normal queue, where tasks then wait seconds; a
        # ratio of 1.0 would leave none on the sticky queue, whose tasks then time out (10 s)
        # before moving to the normal one. Half and half.
        max_concurrent_workflow_task_polls=16,
        nonsticky_to_sticky_poll_ratio=0.5,
        workflow_task_executor=ThreadPoolExecutor(max_workers=4),
    )


REPORT_INTERVAL_S = 30.0
"""How often a worker re-sends its state to the destination's ``DestinationState``."""


class StateReporter:
    """Sends one worker's state of one destination to its ``DestinationState`` workflow.

    Reporting is best effort: a failure is logged (once per cause, see ``courier.logs``) and
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


UPDATE_TIMEOUT_S = 5.0
"""Longest a worker waits for its destination's rate decision before moving on."""
CONTROL_INTERVAL_S = 1.0
"""How often a worker sends its attempt outcomes (if any) to its destination's rate control."""
QUEUE_CHECK_S = 5.0
"""How long a worker trusts having seen no rate control decision on its queue."""


class RateControl:
    """Sends one worker's attempt outcomes to the destination's controller; applies its decision.

    The decision (circuit open, adaptive rate) is the same for every worker of the destination;
    each applies it once as the queue's server-side rate limit, which is idempotent.
    """

    def __init__(
        self,
        client: Client,
        config: CourierConfig,
        name: str,
        outcomes: AttemptOutcomes,
        reporter: StateReporter,
        since: float,
    ) -> None:
        self.reporter = reporter
        self.since = since
        self.client = client
        self.name = name
        self.outcomes = outcomes
        self.task_queue = config.destination(name).task_queue
        self.configured_limit = config.destination(name).rate_limit
        self.settings = config.destination(name).rate_control
        self.handle = client.get_workflow_handle(destination_state_id(self.task_queue))
        self.applied_version = 0
        self.mode = "normal"
        self._failures_reported = False
        self._no_decision_seen_at = -QUEUE_CHECK_S

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
                    await self.reporter.send(connected=True, since=self.since)
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
        was open, or whose neighbour's failures opened it, has never been told. The decisions
        are the queue's rate overrides, so the queue says (looked up at most every
        ``QUEUE_CHECK_S`` while it says none).
        """
        if window.throttled or window.unavailable:
            self._failures_reported = True
            return True
        if self.mode != "normal" or self._failures_reported:
            self._failures_reported = False
            return True
        if time.monotonic() - self._no_decision_seen_at < QUEUE_CHECK_S:
            return False
        try:
            in_force = await rate_controlled(self.client, self.task_queue)
        except RPCError as err:
            log.warning("%s: cannot read the queue's rate override: %s", self.name, err)
            return True
        if not in_force:
            self._no_decision_seen_at = time.monotonic()
        return in_force

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
        if decision.mode != self.mode or (decision.mode == "adaptive" and "lowered" in line):
            log.warning("%s: %s", self.name, line, extra={"destination": self.name})
        self.mode = decision.mode


def _being_cancelled() -> bool:
    """Whether this task has a cancellation request pending: the SDK reports a cancelled update
    call as its own RPC error, which must then not be handled as a slow answer. (A timeout's
    own cancellation is withdrawn by ``asyncio.timeout`` before the error gets here.)"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


PACE_REFRESH_S = 1.0
"""How often a worker re-reads its queue's rate and workers to set its pace (when it has a
rate; an unlimited queue is re-read every ``PACE_REFRESH_UNLIMITED_S``)."""
PACE_REFRESH_UNLIMITED_S = 10.0


async def keep_pace(
    client: Client, task_queue: str, pacer: Pacer, configured: float | None
) -> None:
    """Keep ``pacer`` at this worker's share of the queue's effective rate, until cancelled.

    The share is the rate over the live workers the server sees polling the queue (this one
    included); a worker that died keeps counting for up to a minute, during which the others
    go slower than they could; a worker that joins is seen by the others within a second.
    Until the server reports a rate (before the first poll) the worker's own, ``configured``,
    holds.
    """
    while True:
        await set_share(client, task_queue, pacer, configured)
        await asyncio.sleep(PACE_REFRESH_S if pacer.rate else PACE_REFRESH_UNLIMITED_S)


async def set_share(
    client: Client, task_queue: str, pacer: Pacer, configured: float | None
) -> None:
    """Set ``pacer`` to this worker's share of the queue's rate once (see ``keep_pace``)."""
    try:
        queue = await describe(client, task_queue)
        rate = queue.rate_limit if queue.rate_limit_source != "none" else configured
        workers = len(queue.worker_identities | {client.identity})
        pacer.set_rate(rate / workers if rate else None)
    except (RPCError, RuntimeError) as err:
        log.warning("%s: cannot read the queue's rate limit: %s", task_queue, err)
    except Exception:  # a bug: say so, keep the last pace, keep going
        log.exception("%s: setting the pace failed", task_queue)


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


async def serve_destination(
    client: Client, config: CourierConfig, name: str, source: RecordSource
) -> None:
    """Open a destination (retrying), then serve its task queue until cancelled.

    Until the destination is open its queue is not polled, so its records wait in Temporal
    instead of failing attempts. Cancelling shuts the worker down gracefully: polling stops at
    once and in-flight exports get ``workers.graceful_shutdown`` to finish.
    """
    dest_config = config.destination(name)
    reporter = StateReporter(client, config, name)
    destination = await open_destination(config, name, reporter)
    since = time.time()
    try:
        activity = ExportActivity(name, destination, source)
        worker = Worker(
            client,
            task_queue=dest_config.task_queue,
            activities=[activity.export, activity.export_range],
            tuner=activity_slots(config, name, activity.pacer),
            max_concurrent_activity_task_polls=min(dest_config.max_concurrency, 8),
            max_task_queue_activities_per_second=dest_config.rate_limit,
            graceful_shutdown_timeout=config.workers.graceful_shutdown,
        )
        log.info(
            "worker for %s on queue %s: rate %s, concurrency %d",
            name,
            dest_config.task_queue,
            format_rate(dest_config.rate_limit),
            dest_config.max_concurrency,
        )
        metrics.DESTINATION_CONNECTED.labels(name).set(1)

        async def keep_reporting() -> None:
            while True:
                await reporter.send(connected=True, since=since)
                await asyncio.sleep(REPORT_INTERVAL_S)

        reporting = asyncio.create_task(keep_reporting())
        # Pace from the first attempt: at a share of the rate among the workers already
        # polling (the configured rate if the server cannot say).
        activity.pacer.set_rate(dest_config.rate_limit)
        await set_share(client, dest_config.task_queue, activity.pacer, dest_config.rate_limit)
        pacing = asyncio.create_task(
            keep_pace(client, dest_config.task_queue, activity.pacer, dest_config.rate_limit)
        )
        rate_control = dest_config.rate_control
        control = (
            asyncio.create_task(
                RateControl(client, config, name, activity.outcomes, reporter, since).run()
            )
            if rate_control.circuit_breaker or rate_control.adaptive
            else None
        )
        try:
            await worker.run()
        finally:
            reporting.cancel()
            pacing.cancel()
            if control is not None:
                control.cancel()
    finally:
        metrics.DESTINATION_CONNECTED.labels(name).set(0)
        await destination.close()
        # Tell status this worker is gone; bounded, so a lost Temporal cannot hold up exit.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await reporter.send(connected=False, since=since, stopped=True)


def activity_slots(config: CourierConfig, name: str, pacer: Pacer) -> WorkerTuner:
    """A destination worker's slots: ``max_concurrency`` exports at once; in batch mode only
    ``PACED_SLOTS`` while the worker paces (see ``PacedSlots``)."""
    slots = config.destination(name).max_concurrency
    activity_slots: FixedSizeSlotSupplier | CustomSlotSupplier = FixedSizeSlotSupplier(slots)
    if config.ingest.mode == "batch":
        activity_slots = PacedSlots(pacer, slots=slots, paced_slots=min(slots, PACED_SLOTS))
    unused = FixedSizeSlotSupplier(1)  # the worker runs no workflows, local activities, Nexus
    return WorkerTuner.create_composite(
        workflow_supplier=unused,
        activity_supplier=activity_slots,
        local_activity_supplier=unused,
        nexus_supplier=unused,
    )


async def run_workers(
    client: Client,
    config: CourierConfig,
    *,
    destinations: Sequence[str] = (),
    workflows: bool = False,
) -> None:
    """Run the chosen workers until cancelled, then shut them down gracefully."""
    if not destinations and not workflows:
        raise ValueError("choose at least one destination or the workflow worker")
    async with contextlib.AsyncExitStack() as stack:
        source = KafkaRecordSource(config.kafka)  # connects on first use
        stack.push_async_callback(source.close)
        # A task group, not gather: cancelled, it waits for every worker's graceful shutdown.
        async with asyncio.TaskGroup() as group:
            for name in destinations:
                group.create_task(serve_destination(client, config, name, source))
            group.create_task(control_worker(client, config).run())
            if workflows:
                dead_letters = DeadLetters(config, source)
                stack.push_async_callback(dead_letters.close)
                worker = workflow_worker(client, config, [dead_letters.dead_letter])
                group.create_task(worker.run())
                log.info("workflow worker on queue %s", config.temporal.workflow_task_queue)
