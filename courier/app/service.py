"""Running Courier's parts together in one process, with graceful shutdown on signals.

SIGINT and SIGTERM are honoured in every state: while connecting to Temporal
(``courier.core.stopping.unless_stopped`` around the connect), while ingest connects to Kafka, and
while running; the process is then gone within about 2 s (destination workers with exports in
flight take up to ``workers.graceful_shutdown`` to let them finish).

With ``--metrics-port``, the one port serves Courier's metrics and the Temporal SDK's: the SDK's
exporter listens on a free loopback port and ``/metrics`` appends what it says (see
:mod:`courier.core.metrics`). A process that runs ingest also reads its destinations' task
queues for their gauges (:mod:`courier.app.collector`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator, Sequence

from temporalio.client import Client
from temporalio.runtime import Runtime

from courier.app.collector import DestinationCollector
from courier.config.model import CourierConfig
from courier.core import metrics
from courier.core.health import HEALTH
from courier.core.output import Output
from courier.core.stopping import unless_stopped
from courier.temporal.client import connect, sdk_metrics_runtime
from ingest.consumer import Ingest
from worker import run_workers

log = logging.getLogger("courier")

INGEST_STOP_S = 3.0
"""Backstop: ingest that has not stopped this long after being asked is cancelled."""
SDK_METRICS_HOST = "127.0.0.1"
"""The Temporal SDK's exporter is only read by this process's ``/metrics``: loopback only."""
SDK_PORT_ATTEMPTS = 3


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind((SDK_METRICS_HOST, 0))
        return int(sock.getsockname()[1])


def sdk_metrics_on_loopback() -> tuple[Runtime, str] | None:
    """A Temporal runtime whose SDK metrics exporter listens on a free loopback port, and its
    ``host:port``; None (after a warning) if none could be bound: Courier's metrics are served
    without the SDK's."""
    error: Exception | None = None
    for _ in range(SDK_PORT_ATTEMPTS):  # another process may take the port between the two binds
        port = _free_loopback_port()
        try:
            return sdk_metrics_runtime(port, SDK_METRICS_HOST), f"{SDK_METRICS_HOST}:{port}"
        except Exception as err:  # the SDK's bridge raises a bare error when it cannot bind
            error = err
    log.warning("cannot serve the Temporal SDK's metrics (%s); /metrics serves Courier's", error)
    return None


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM set ``stop`` (where the loop supports it)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)


async def run_process(
    config: CourierConfig,
    *,
    ingest: bool,
    destinations: Sequence[str],
    workflows: bool,
    metrics_port: int | None,
    out: Output,
) -> int:
    """Serve metrics, connect to Temporal (retrying), then run; the process's exit code.

    SIGINT/SIGTERM stop it in any state (exit 0). A metrics port that cannot be served is an
    error line (exit 2); an unexpected error while running is logged as critical (exit 1).
    """
    # Said before /readyz is served, so a probe never sees a reason older than the truth.
    HEALTH.set_ready(False, f"connecting to Temporal at {config.temporal.address}")
    if metrics_port is not None:
        try:
            metrics.serve(metrics_port)
        except OSError as err:
            return out.fail(
                f"cannot serve metrics on 127.0.0.1:{metrics_port}: {err.strerror or err}; "
                "choose another --metrics-port",
                2,
            )
        log.info(
            "metrics (Courier's and the Temporal SDK's) on http://%s:%d/metrics, health on "
            "/healthz and /readyz",
            metrics.bind_host(),
            metrics_port,
        )
    runtime = None
    if metrics_port is not None:
        sdk = sdk_metrics_on_loopback()
        if sdk is not None:
            runtime, address = sdk
            metrics.append_sdk_metrics(address)
    stop = asyncio.Event()
    beating = asyncio.create_task(HEALTH.keep_beating())
    with stop_on_signals(stop):
        connecting = connect(config.temporal, wait=True, runtime=runtime, tracing=config.tracing)
        client = await unless_stopped(connecting, stop)
        if client is None:
            beating.cancel()
            log.info("stopped before connecting to Temporal")
            return 0
        HEALTH.set_ready(True)
        stop_task = asyncio.create_task(stop.wait())
        stop_task.add_done_callback(lambda _: HEALTH.set_ready(False, "shutting down"))
        try:
            await run_service(
                client,
                config,
                ingest=Ingest(config, client) if ingest else None,
                destinations=destinations,
                workflows=workflows,
                stop=stop,
            )
        except Exception:
            log.critical("stopped by an unexpected error (please report it)", exc_info=True)
            return 1
        finally:
            stop_task.cancel()
            beating.cancel()
    return 0


async def run_service(
    client: Client,
    config: CourierConfig,
    *,
    ingest: Ingest | None = None,
    destinations: Sequence[str] = (),
    workflows: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Run ingest and/or workers until ``stop`` is set (or SIGINT/SIGTERM arrives).

    Then ingest (committing what is safe) and the workers shut down side by side.
    """
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        await _run(client, config, ingest, destinations, workflows, stop)


async def _run(
    client: Client,
    config: CourierConfig,
    ingest: Ingest | None,
    destinations: Sequence[str],
    workflows: bool,
    stop: asyncio.Event,
) -> None:
    ingest_task = asyncio.create_task(ingest.run()) if ingest else None
    # The process that runs ingest also publishes its destinations' queues (a worker-only
    # process would repeat it once per replica).
    collecting = asyncio.create_task(DestinationCollector(client, config).run()) if ingest else None
    workers_task = (
        asyncio.create_task(
            run_workers(client, config, destinations=destinations, workflows=workflows)
        )
        if destinations or workflows
        else None
    )
    tasks = [t for t in (ingest_task, workers_task) if t is not None]
    stop_task = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stop_task], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stop_task and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        log.info("shutting down")
        stop_task.cancel()
        if collecting is not None:
            collecting.cancel()
        if workers_task is not None:
            workers_task.cancel()  # polling stops at once; in-flight exports may finish
        if ingest is not None and ingest_task is not None:
            ingest.stop()
            try:
                await asyncio.wait_for(asyncio.shield(ingest_task), INGEST_STOP_S)
            except TimeoutError:
                log.warning("ingest did not stop within %.0fs; cancelled", INGEST_STOP_S)
                ingest_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ingest_task
            except asyncio.CancelledError:
                pass
        if workers_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await workers_task
