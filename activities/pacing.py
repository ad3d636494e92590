"""Pacing: a worker sends its records evenly spaced, at its share of the destination's rate.

The Temporal server enforces a destination's rate limit across all its workers, but only per
activity, and its limiter starts with a full bucket: in the first second of a backlog it hands
out about twice the limit, and in batch mode one activity carries many records. A partner that
allows 5 requests per second answers 429 to either. Each worker therefore also spaces its own
records at ``rate / workers`` with a burst of one, which keeps every 1-second window within the
limit plus one while the server still holds the cluster-wide rate. ``courier.serving.pacing``
keeps the pacer's rate current.

The pacer keeps a schedule (GCRA: each record's due time is the previous one's plus the
interval), not a sleep per record: a timer fires late — by a millisecond or so, more on a busy
event loop — and a pacer that waits one interval after each record loses that every time (at
50 records/s, 5 % under the limit). Keeping the schedule, a late record makes the next wait
shorter, by at most ``CATCH_UP`` of an interval: records never go closer than
``1 - CATCH_UP`` intervals, and a long stall or idle time is not made up.

The server's limit counts activities. In per-record mode an activity is one record, and the
server holds the destination's rate exactly across workers. In batch mode an activity carries
up to one second of the rate, and the ranges' last ones carry fewer, so a limit on activities
would either let records through faster than the limit or hold them back below it; the queue's
limit is then ``rate_limit`` activities/s, which is never below the record rate, and the
workers' pacing holds the records to it (each at its share, ``PacedSlots`` keeping the backlog
in the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from temporalio.worker import (
    CustomSlotSupplier,
    FixedSizeSlotSupplier,
    SlotMarkUsedContext,
    SlotPermit,
    SlotReleaseContext,
    SlotReserveContext,
    WorkerTuner,
)

CATCH_UP = 0.25
"""How much of an interval a record late on its schedule lets the next one make up (less for
a fractional rate, so that a second never holds more than rate + 1 records)."""


class Pacer:
    """Spaces records at most ``rate`` per second, no burst; no rate means no pacing."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self.source = "the destination's rate_limit"
        """What sets the rate, for messages: the config, an operator's limit, rate control."""
        self._due = 0.0
        """Event loop time the next record is due at, on the schedule."""
        self._sent = 0.0
        """Event loop time the last record went (its timer may have fired late)."""
        self._turn = asyncio.Lock()

    def set_rate(self, rate: float | None, source: str | None = None) -> None:
        """Change the pace (records/s); None turns pacing off. ``source`` says what set it."""
        if source is not None:
            self.source = source
        self.rate = rate or None

    async def wait(self, count: int = 1, *, until: float | None = None) -> bool:
        """Return when ``count`` more records may go, or at ``until`` (event loop time) at the
        latest; whether the pace was kept."""
        loop = asyncio.get_running_loop()
        for _ in range(count):
            if self.rate is None:
                return True
            try:
                async with asyncio.timeout_at(until), self._turn:  # concurrent exports queue
                    interval = 1 / self.rate
                    # Any second then holds at most rate + 1 records (floor(rate + catch_up) + 1).
                    catch_up = min(CATCH_UP, 1 - self.rate % 1)
                    now = loop.time()
                    if self._due < now - interval * catch_up:
                        due = now  # idle or stalled: the schedule starts anew, nothing made up
                    else:  # on the schedule, but never close on the last one
                        due = max(self._due, self._sent + interval * (1 - catch_up))
                    if due > now:
                        await asyncio.sleep(due - now)
                    self._due = due + interval
                    self._sent = loop.time()
            except TimeoutError:
                return False
        return True


PACED_SLOTS = 2
"""Batch activities a pacing worker holds at once: one being sent, the next one ready."""

SLOT_RECHECK_S = 1.0
"""How often a waiting reservation looks again whether pacing stopped (more slots then)."""


class PacedSlots(CustomSlotSupplier):
    """A destination worker's activity slots: ``slots``, but ``paced_slots`` while it paces.

    In batch mode an activity carries many records and the worker spaces them at its share of
    the rate. The server's limit counts activities, not records, so it cannot keep such a worker
    from taking more records than it can send within their attempts; holding only a couple of
    activities while pacing leaves the backlog waiting in the queue, where it is seen and
    shared, instead of in one worker.
    """

    def __init__(self, pacer: Pacer, *, slots: int, paced_slots: int) -> None:
        self._pacer = pacer
        self._slots = slots
        self._paced_slots = paced_slots
        self._used = 0
        self._lock = threading.Lock()  # the SDK may release from its own thread
        self._loop = asyncio.get_running_loop()
        self._freed = asyncio.Event()

    @property
    def capacity(self) -> int:
        """Slots right now."""
        return self._paced_slots if self._pacer.rate is not None else self._slots

    def _take(self) -> bool:
        with self._lock:
            if self._used >= self.capacity:
                return False
            self._used += 1
            return True

    async def reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit:
        """Wait for a free slot (called before each poll)."""
        while not self._take():
            self._freed.clear()
            if self._take():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SLOT_RECHECK_S):
                    await self._freed.wait()
        return SlotPermit()

    def try_reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit | None:
        """A slot if one is free now."""
        return SlotPermit() if self._take() else None

    def mark_slot_used(self, ctx: SlotMarkUsedContext) -> None:
        """Nothing to do: a reserved slot counts from its reservation."""

    def release_slot(self, ctx: SlotReleaseContext) -> None:
        """Free the slot and wake a waiting reservation."""
        with self._lock:
            self._used -= 1
        self._loop.call_soon_threadsafe(self._freed.set)


def activity_slots(pacer: Pacer, *, slots: int, batch: bool) -> WorkerTuner:
    """A destination worker's slots: ``slots`` exports at once; in ``batch`` mode only
    ``PACED_SLOTS`` while the worker paces (see ``PacedSlots``)."""
    supplier: FixedSizeSlotSupplier | CustomSlotSupplier = FixedSizeSlotSupplier(slots)
    if batch:
        supplier = PacedSlots(pacer, slots=slots, paced_slots=min(slots, PACED_SLOTS))
    unused = FixedSizeSlotSupplier(1)  # the worker runs no workflows, local activities, Nexus
    return WorkerTuner.create_composite(
        workflow_supplier=unused,
        activity_supplier=supplier,
        local_activity_supplier=unused,
        nexus_supplier=unused,
    )
