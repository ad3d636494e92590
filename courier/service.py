"""Running Courier's parts together in one process, with graceful shutdown on signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from temporalio.client import Client

from courier.config import CourierConfig
from ingest.consumer import Ingest
from worker import run_workers

log = logging.getLogger("courier")


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

    Ingest stops first (committing what is safe), then the workers shut down.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    ingest_task = asyncio.create_task(ingest.run()) if ingest else None
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
        if ingest is not None and ingest_task is not None:
            ingest.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await ingest_task
        if workers_task is not None:
            workers_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await workers_task
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
