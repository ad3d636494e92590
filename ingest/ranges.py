"""Batch mode: hand off contiguous offset ranges of a partition as ``ExportRange`` workflows.

A range's workflow ID comes from its first offset and its last offset is kept in the workflow's
memo. Ingest commits only past ranges whose workflows exist, so after a crash it re-reads from
the start of a range: if that range's workflow exists already, ingest learns where it ended and
goes on from the next offset — ranges are found again exactly, no record is handed off twice or
skipped, whatever ``max_records`` and ``max_wait`` cut this time.

A range is started through the failure contract of ``ingest.handoff`` (``deliver``), as a
record is: transient Temporal errors retry with backoff and the partition waits; Courier's own
misconfiguration is logged as ERROR once a minute and retried; anything about the range itself
(Temporal refuses its input, it cannot be built or encoded, a bug) still gives it a durable,
visible outcome — an ``ExportRange`` workflow that exports nothing and fails listing each of
its records with the reason — and the partition moves on. The failure is logged with the
range's coordinates and counted (``courier_hand_off_failures``).

:class:`Ranges` is the loop's strategy in batch mode: it gathers each partition's buffered
records into an open range (offsets and keys only) and hands off ranges that are full
(``max_records`` or ``max_bytes``) or waited ``max_wait``, one partition's ranges several at a
time once no earlier run's range can follow.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from courier.config.model import CourierConfig, IngestConfig
from courier.core import metrics
from courier.core import search_attributes as sa
from courier.core.ids import range_workflow_id
from ingest.handoff import Attempt, Subject, deliver
from ingest.routing import RouteDecision, Router
from ingest.strategy import Buffers, HandOffs
from workflows.export_range import ExportRange
from workflows.types import ExportRangeInput, FailedRecord, RangeSlice

log = logging.getLogger("courier.ingest")

LAST_OFFSET_MEMO = "last_offset"
RECORDS_MEMO = "records"
"""Memo of a range: how many of its records go to each destination (``courier status``)."""
MAX_RANGES_PER_PARTITION = 4
MAX_BACKOFF_S = 30.0
FAILED_RANGE_REASONS_BYTES = 1_000_000
"""Room for the reasons in a failed range's input: each record repeats the range's reason."""


@dataclass
class OpenRange:
    """Records of one partition gathered for the next range: offsets and keys only (or, when a
    routing rule needs the whole record, the decision made when it was read)."""

    opened: float = field(default_factory=time.monotonic)
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | RouteDecision | None] = field(default_factory=list)
    size: int = 0
    """Bytes of the records' keys and values, as stored in Kafka."""
    full: bool = False
    """Holds ``max_records`` records, or the next record would take it over ``max_bytes``."""

    def fits(self, size: int, ingest: IngestConfig) -> bool:
        """Whether the partition's next record (``size``: its key's and value's bytes) may
        join; if not, the range is full. A record over ``max_bytes`` gets a range of its own."""
        if self.offsets and self.size + size > ingest.max_bytes:
            self.full = True
        return not self.full

    def add(
        self, offset: int, key: bytes | RouteDecision | None, size: int, ingest: IngestConfig
    ) -> None:
        """Add the partition's next record (one that :meth:`fits`)."""
        self.offsets.append(offset)
        self.keys.append(key)
        self.size += size
        self.full = len(self.offsets) >= ingest.max_records

    def ready(self, ingest: IngestConfig) -> bool:
        """Full, or waited ``max_wait``."""
        return self.full or (
            bool(self.offsets) and time.monotonic() - self.opened >= ingest.max_wait.total_seconds()
        )


@dataclass(frozen=True)
class RangeHandOff:
    """Outcome of a range hand-off: the last offset now covered by started workflows."""

    covered_until: int
    started: int
    """Records handed off in ranges started by this call (skipped ones not counted)."""
    existing: int
    """Records found in ranges an earlier run had started."""
    skipped: int
    failed: int = 0
    """Records of ranges that could not be handed off and got a failed workflow instead."""


def range_input(
    config: CourierConfig,
    router: Router,
    *,
    topic: str,
    topic_id: str,
    partition: int,
    offsets: list[int],
    keys: list[bytes | RouteDecision | None],
) -> ExportRangeInput:
    """The workflow input of a range (records a rule skips are not listed in it)."""
    by_destination: dict[str, list[int]] = {}
    failed: list[FailedRecord] = []
    for offset, key in zip(offsets, keys, strict=True):
        decision = router.route(key)
        if decision.destination is not None:
            by_destination.setdefault(decision.destination, []).append(offset)
        elif decision.action != "skip":
            failed.append(FailedRecord(offset, None, decision.reason))
    slices = [
        RangeSlice(destination=config.destination(name).policy(), offsets=found)
        for name, found in by_destination.items()
    ]
    return ExportRangeInput(
        group=config.kafka.group,
        topic=topic,
        topic_id=topic_id,
        partition=partition,
        first_offset=offsets[0],
        last_offset=offsets[-1],
        slices=slices,
        failed=failed,
    )


@dataclass(frozen=True)
class RangeSpan:
    """Where a range is: what its failed workflow still says if its input cannot be built."""

    group: str
    topic: str
    topic_id: str
    partition: int
    offsets: list[int]

    @classmethod
    def of(cls, workflow_input: ExportRangeInput) -> RangeSpan:
        """The span of a built input (its offsets: routed and failed ones)."""
        offsets = _listed(workflow_input)
        return cls(
            group=workflow_input.group,
            topic=workflow_input.topic,
            topic_id=workflow_input.topic_id,
            partition=workflow_input.partition,
            offsets=offsets or [workflow_input.first_offset, workflow_input.last_offset],
        )


@dataclass(frozen=True)
class RangeStart:
    """Outcome of starting one range's workflow."""

    existing_last: int | None
    """None if this call started the workflow; else the last offset of the range found."""
    failed_reason: str | None = None
    """Set when the range could not be handed off and got a failed workflow instead."""
    listed: int = 0
    """Records the started workflow lists, to export or as failed (skipped ones are not)."""


def failed_range_input(
    span: RangeSpan, built: ExportRangeInput | None, reason: str
) -> ExportRangeInput:
    """A range's input that exports nothing and fails listing each record with ``reason``.

    Records keep the destination they were routed to (``built``, if the input could be built)
    and skipped ones stay out; without ``built`` every record is listed, with no destination.
    """
    if len(span.offsets) * len(reason) > FAILED_RANGE_REASONS_BYTES:
        reason = reason[: max(100, FAILED_RANGE_REASONS_BYTES // len(span.offsets))] + "…"
    if built is None:
        failed = [FailedRecord(offset, None, reason) for offset in span.offsets]
    else:
        failed = [
            *built.failed,
            *(
                FailedRecord(offset, piece.destination.name, reason)
                for piece in built.slices
                for offset in piece.offsets
            ),
        ]
        failed.sort(key=lambda f: f.offset)
    return ExportRangeInput(
        group=span.group,
        topic=span.topic,
        topic_id=span.topic_id,
        partition=span.partition,
        first_offset=span.offsets[0] if built is None else built.first_offset,
        last_offset=span.offsets[-1] if built is None else built.last_offset,
        slices=[],
        failed=failed,
    )


async def hand_off_range(
    client: Client,
    config: CourierConfig,
    router: Router,
    *,
    topic: str,
    topic_id: str,
    partition: int,
    offsets: list[int],
    keys: list[bytes | RouteDecision | None],
    max_backoff: float = 30.0,
) -> RangeHandOff:
    """Start the workflows covering ``offsets`` (one, or more if earlier ranges overlap)."""
    started = existing = skipped = failed = 0
    covered = offsets[0] - 1
    while offsets and offsets[-1] > covered:
        keep = [i for i, o in enumerate(offsets) if o > covered]
        offsets, keys = [offsets[i] for i in keep], [keys[i] for i in keep]
        # Built inside launch_range, so that its failures follow the hand-off contract.
        build = functools.partial(
            range_input,
            config,
            router,
            topic=topic,
            topic_id=topic_id,
            partition=partition,
            offsets=offsets,
            keys=keys,
        )
        wid = range_workflow_id(
            group=config.kafka.group,
            topic=topic,
            topic_id=topic_id,
            partition=partition,
            first=offsets[0],
        )
        span = RangeSpan(config.kafka.group, topic, topic_id, partition, offsets)
        result = await launch_range(client, config, wid, span, build, max_backoff=max_backoff)
        if result.existing_last is None:
            if result.failed_reason is None:
                started += result.listed
            else:
                failed += result.listed
            skipped += len(offsets) - result.listed
            covered = offsets[-1]
        else:
            existing += sum(1 for o in offsets if o <= result.existing_last)
            covered = result.existing_last
    return RangeHandOff(covered, started=started, existing=existing, skipped=skipped, failed=failed)


def _listed(workflow_input: ExportRangeInput) -> list[int]:
    """The offsets a range's input lists (routed or failed; skipped ones are not listed)."""
    return sorted(
        [o for piece in workflow_input.slices for o in piece.offsets]
        + [f.offset for f in workflow_input.failed]
    )


def _destinations(workflow_input: ExportRangeInput) -> list[str]:
    """The range's destinations: its slices', then those of records listed as failed."""
    names = [piece.destination.name for piece in workflow_input.slices]
    for failed in workflow_input.failed:
        if failed.destination is not None and failed.destination not in names:
            names.append(failed.destination)
    return names


async def launch_range(
    client: Client,
    config: CourierConfig,
    wid: str,
    span: RangeSpan,
    build: Callable[[], ExportRangeInput],
    *,
    max_backoff: float,
) -> RangeStart:
    """Start the workflow of the range ``build()`` makes, following the failure contract.

    Returns once the range's workflow (or its failed workflow) exists, or an earlier run's
    range under ``wid`` is found.
    """
    inputs: dict[str | None, ExportRangeInput] = {}

    async def start(failed_reason: str | None) -> int | None:
        if failed_reason not in inputs:  # built once; retries only resend it
            inputs[failed_reason] = (
                build()
                if failed_reason is None
                else failed_range_input(span, inputs.get(None), failed_reason)
            )
        workflow_input = inputs[failed_reason]
        names = _destinations(workflow_input)
        attributes = TypedSearchAttributes(
            [
                SearchAttributePair(sa.TOPIC, workflow_input.topic),
                SearchAttributePair(sa.PARTITION, workflow_input.partition),
                SearchAttributePair(sa.OFFSET, workflow_input.first_offset),
                SearchAttributePair(
                    sa.DESTINATION,
                    names[0] if len(names) == 1 else "(several)" if names else "(none)",
                ),
            ]
        )
        where = f"[{workflow_input.first_offset}..{workflow_input.last_offset}]"
        summary = (
            f"{where} → {', '.join(names) or 'no destination'}"
            if failed_reason is None
            else f"{where}: hand-off failed"
        )
        try:
            await client.start_workflow(
                ExportRange.run,
                workflow_input,
                id=wid,
                task_queue=config.temporal.workflow_task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=attributes,
                memo={
                    LAST_OFFSET_MEMO: workflow_input.last_offset,
                    RECORDS_MEMO: {
                        piece.destination.name: len(piece.offsets)
                        for piece in workflow_input.slices
                    },
                },
                static_summary=summary[:200],
            )
            return None
        except WorkflowAlreadyStartedError:
            description = await client.get_workflow_handle(wid).describe()
            return int(await description.memo_value(LAST_OFFSET_MEMO, type_hint=int))

    existing_last, failed_reason = await deliver(
        Subject(span.topic, span.partition, span.offsets[0], span.offsets[-1]),
        start,
        Attempt(
            what=f"starting {wid}",
            verb="start",
            refused="the range's workflow",
            failure="its range fails",
            record_id=wid,
        ),
        max_backoff=max_backoff,
    )
    listed = 0 if existing_last is not None else len(_listed(inputs[failed_reason]))
    return RangeStart(existing_last, failed_reason, listed)


async def start_range(
    client: Client,
    config: CourierConfig,
    wid: str,
    workflow_input: ExportRangeInput,
    *,
    max_backoff: float,
) -> int | None:
    """Start a range's workflow; None if started (or failed), else the existing range's last."""
    result = await launch_range(
        client,
        config,
        wid,
        RangeSpan.of(workflow_input),
        lambda: workflow_input,
        max_backoff=max_backoff,
    )
    return result.existing_last


class Ranges:
    """Batch mode: hands off each partition's records as contiguous offset ranges."""

    def __init__(self, hand_offs: HandOffs) -> None:
        self.hand_offs = hand_offs
        self._open: dict[TopicPartition, OpenRange] = {}
        self._in_flight: collections.Counter[TopicPartition] = collections.Counter()
        self._fresh: set[TopicPartition] = set()
        """Partitions where a range was started anew since assignment. Earlier runs' ranges are
        contiguous from the committed offset, so past the first fresh start none can follow,
        and ranges of the partition may be handed off several at a time."""
        self._covered: dict[TopicPartition, int] = {}
        """Last offset of a partition that earlier runs' ranges cover."""

    def dispatch(self, buffers: Buffers) -> None:
        """Gather buffered records into open ranges; hand off those that are ready."""
        self._gather(buffers)
        self._close()

    def holds(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` has an open range (its records' hand-off begins when it closes)."""
        return tp in self._open

    def due_in_ms(self) -> int | None:
        """While a range is open: its ``max_wait``, after which it is handed off unfilled."""
        if not self._open:
            return None
        return int(self.hand_offs.config.ingest.max_wait.total_seconds() * 1000)

    def on_restart(self, tp: TopicPartition) -> None:
        """Forget ``tp``'s open range (never begun) and what earlier runs' ranges covered."""
        self._open.pop(tp, None)
        self._covered.pop(tp, None)
        self._fresh.discard(tp)

    def on_revoke(self, revoked: set[TopicPartition]) -> None:
        """Forget the revoked partitions' open ranges: the next owner reads them again."""
        for tp in revoked:
            self.on_restart(tp)

    def _gather(self, buffers: Buffers) -> None:
        """Move buffered records into each partition's open range (offsets and keys only)."""
        shared = self.hand_offs
        ingest = shared.config.ingest
        for tp, records in buffers.items():
            if not records:
                continue
            topic_id = shared.topic_id(tp)
            if topic_id is None:
                continue
            open_range = self._open.get(tp)
            while records:
                record = records[0]
                expected = (
                    open_range.offsets[-1] + 1
                    if open_range is not None and open_range.offsets
                    else shared.tracker.next_offset(tp)
                )
                if expected is not None and record.offset < expected:
                    # The partition was rewound (a reset or a seek): start afresh.
                    shared.restart(tp)
                    self.on_restart(tp)
                    open_range = None
                if record.offset <= self._covered.get(tp, -1):
                    records.popleft()  # in a range an earlier run handed off already
                    shared.tracker.begin(tp, record.offset)
                    shared.tracker.finish(tp, record.offset)
                    shared.counts["existing"] += 1
                    continue
                if open_range is None:
                    open_range = self._open[tp] = OpenRange()
                size = max(0, record.serialized_key_size) + max(0, record.serialized_value_size)
                if not open_range.fits(size, ingest):
                    break
                records.popleft()
                open_range.add(record.offset, shared.route_input(record, topic_id), size, ingest)

    def _close(self) -> None:
        """Hand off ranges that are full or waited long enough, one at a time per partition."""
        shared = self.hand_offs
        ingest = shared.config.ingest
        for tp, open_range in list(self._open.items()):
            if shared.full():
                return
            busy = self._in_flight[tp]
            if busy and (tp not in self._fresh or busy >= MAX_RANGES_PER_PARTITION):
                continue
            if not open_range.ready(ingest):
                continue
            topic_id = shared.topic_id(tp)
            if topic_id is None:
                continue
            del self._open[tp]
            for offset in open_range.offsets:
                shared.tracker.begin(tp, offset)
            self._in_flight[tp] += 1
            shared.spawn(self._hand_off(tp, open_range, topic_id, shared.epoch(tp)))

    async def _hand_off(
        self, tp: TopicPartition, open_range: OpenRange, topic_id: str, epoch: int
    ) -> None:
        shared = self.hand_offs
        offsets = open_range.offsets
        delay = 1.0
        try:
            while True:
                try:
                    result = await hand_off_range(
                        shared.client,
                        shared.config,
                        shared.router,
                        topic=tp.topic,
                        topic_id=topic_id,
                        partition=tp.partition,
                        offsets=offsets,
                        keys=open_range.keys,
                    )
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug: never lose the range, never drop the error
                    log.exception(
                        "hand-off of %s/%d [%d..%d] failed; retrying",
                        tp.topic,
                        tp.partition,
                        offsets[0],
                        offsets[-1],
                    )
                    metrics.HAND_OFF_FAILURES.labels(tp.topic).inc()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF_S)
            outcomes = [
                ("started", result.started),
                ("existing", result.existing),
                ("skipped", result.skipped),
            ]
            if result.failed:
                outcomes.append(("failed", result.failed))
            for outcome, count in outcomes:
                shared.counts[outcome] += count
                metrics.INGESTED.labels(tp.topic, outcome).inc(count)
            if shared.epoch(tp) == epoch:
                shared.finish(tp, offsets, epoch)
                if result.covered_until > offsets[-1]:
                    self._cover(tp, result.covered_until)
                elif result.started or result.failed:
                    self._fresh.add(tp)
        finally:
            self._in_flight[tp] -= 1

    def _cover(self, tp: TopicPartition, last: int) -> None:
        """Records up to ``last`` are in a range an earlier run handed off: skip them."""
        shared = self.hand_offs
        self._covered[tp] = last
        open_range = self._open.get(tp)
        if open_range is None:
            return
        keep = [i for i, offset in enumerate(open_range.offsets) if offset > last]
        for offset in open_range.offsets[: len(open_range.offsets) - len(keep)]:
            shared.tracker.begin(tp, offset)
            shared.tracker.finish(tp, offset)
            shared.counts["existing"] += 1
        open_range.offsets = [open_range.offsets[i] for i in keep]
        open_range.keys = [open_range.keys[i] for i in keep]
        if not open_range.offsets:
            del self._open[tp]
