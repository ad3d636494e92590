"""Keeping a worker's pace: its share of the destination's rate, as the server sees the queue.

The pacer itself (``activities.pacing``: spacing records inside an export, and the slots a
batch worker holds while pacing) belongs to the activities and knows nothing of the server.
Keeping its rate current does: it reads the queue's effective rate limit (configured, an
operator's ``courier limit`` or a rate control decision) and its live workers through
``courier.core.task_queues``, a layer above the activities, so it lives here, beside the rest of
what a worker does while it serves a destination.
"""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.service import RPCError

from activities.pacing import Pacer
from courier.core.task_queues import QueueState, describe
from courier.rate_control.client import RATE_CONTROL_IDENTITY

log = logging.getLogger("courier.worker")

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


def rate_source(queue: QueueState) -> str:
    """What sets the queue's rate, in words for a message."""
    if queue.rate_limit_source != "override":
        return "the destination's rate_limit"
    if queue.rate_limit_author.startswith(RATE_CONTROL_IDENTITY):
        return "rate control (an open circuit's probes, or a rate lowered after 429s)"
    return "an operator's limit (courier limit)"


async def set_share(
    client: Client, task_queue: str, pacer: Pacer, configured: float | None
) -> None:
    """Set ``pacer`` to this worker's share of the queue's rate once (see ``keep_pace``)."""
    try:
        queue = await describe(client, task_queue)
        rate = queue.rate_limit if queue.rate_limit_source != "none" else configured
        workers = len(queue.worker_identities | {client.identity})
        pacer.set_rate(rate / workers if rate else None, rate_source(queue))
    except (RPCError, RuntimeError) as err:
        log.warning("%s: cannot read the queue's rate limit: %s", task_queue, err)
    except Exception:  # a bug: say so, keep the last pace, keep going
        log.exception("%s: setting the pace failed", task_queue)
