"""``courier redrive``: export one destination's records again, read from Kafka by offset or time.

A re-drive reads a span of each partition with its own consumer (no group, nothing committed:
ingest's position is untouched), routes every record with the *current* rules, and hands the
records routed to the chosen destination off again under the re-drive's own IDs
(``courier/<group>/redrive/<run-id>/…``, :func:`courier.core.ids.redrive_workflow_id`), through the
same hand-off as ingest: ``ExportRecord`` workflows in per-record mode, ``ExportRange``
workflows (one per block of ``RANGE_BLOCK`` offsets, the destination's records only) in batch
mode. Each record keeps its own idempotency key (its original workflow ID) unless a new one is
asked for, in which case the key is its re-drive ID.

Resumable: IDs depend on the run ID and the record (and, in batch mode, on the fixed offset
block), never on where a run stopped, so running the same re-drive again with the same run ID
finds what the first run started and starts only the rest. Starts are paced at the
destination's rate limit in force (the re-drive's exports share the destination's task queue),
so a re-drive adds about as much backlog as the destination can take.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from rich.progress import Progress, TextColumn
from rich.table import Table
from temporalio.client import Client

from courier.config.model import CourierConfig
from courier.core.ids import (
    range_workflow_id,
    redrive_group,
    redrive_workflow_id,
    workflow_id,
)
from courier.core.output import Output
from courier.core.task_queues import describe
from ingest.handoff import hand_off, to_kafka_record
from ingest.kafka import consumer_options
from ingest.ranges import start_range
from ingest.routing import RouteDecision, Router, key_text
from ingest.topic_ids import TopicIds
from workflows.types import ExportRangeInput, RangeSlice

RANGE_BLOCK = 1000
"""Batch mode: a re-drive's ranges cover fixed blocks of this many offsets, so a resumed run
cuts the same ranges whatever its first run read."""
SHOWN_RECORDS = 10
"""Records a dry run lists."""
MAX_STARTS_IN_FLIGHT = 16
_STALL_S = 10.0


class RedriveError(Exception):
    """The re-drive cannot run as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Start:
    """Where a re-drive starts: a partition's offset (``--from-offset T:P:O``)."""

    topic: str
    partition: int
    offset: int

    @staticmethod
    def parse(text: str) -> Start:
        """``TOPIC:PARTITION:OFFSET`` → :class:`Start`; ValueError naming what is wrong."""
        topic, _, rest = text.rpartition(":")
        topic, _, partition = topic.rpartition(":")
        try:
            if not topic:
                raise ValueError
            return Start(topic, int(partition), int(rest))
        except ValueError:
            raise ValueError(
                f"--from-offset {text!r} is not TOPIC:PARTITION:OFFSET (e.g. orders:0:1500)"
            ) from None


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``2026-11-27T09:00:00Z``; without an offset: UTC); ValueError if not."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time; write e.g. 2026-11-27T09:00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Span:
    """The offsets of one partition a re-drive reads: ``start`` up to ``end`` (exclusive)."""

    topic: str
    topic_id: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        """Offsets in the span (records, less any transaction markers)."""
        return max(0, self.end - self.start)


@dataclass(frozen=True)
class RoutedRecord:
    """A record routed to the re-driven destination, as a dry run lists it."""

    coordinates: str
    key: str | None
    timestamp: str
    workflow_id: str
    idempotency_key: str


@dataclass
class RedriveSummary:
    """What a re-drive read and did."""

    run_id: str
    destination: str
    mode: str
    dry_run: bool
    rate: float | None
    """Records/s the starts were paced at (None: unlimited)."""
    spans: list[Span] = field(default_factory=list)
    read: int = 0
    routed: int = 0
    """Records the current rules route to the destination."""
    started: int = 0
    already_present: int = 0
    """Records an earlier run with this run ID had started already."""
    failed_hand_offs: int = 0
    """Records that could not be handed off and got a Failed workflow with the reason."""
    first: list[RoutedRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """The summary for ``--json``."""
        return {
            "run_id": self.run_id,
            "destination": self.destination,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "rate": self.rate,
            "spans": [
                {"topic": s.topic, "partition": s.partition, "start": s.start, "end": s.end}
                for s in self.spans
            ],
            "read": self.read,
            "routed": self.routed,
            "started": self.started,
            "already_present": self.already_present,
            "failed_hand_offs": self.failed_hand_offs,
            "first": [r.__dict__ for r in self.first],
            "notes": self.notes,
        }


class _Pacer:
    """Spaces starts at ``rate`` records/s (burst of one); work found present is refunded."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._next = time.monotonic()

    async def take(self, records: int) -> None:
        """Wait for the turn of ``records`` records, and book their time."""
        if self.rate is None:
            return
        delay = self._next - time.monotonic()
        self._next = max(self._next, time.monotonic()) + records / self.rate
        if delay > 0:
            await asyncio.sleep(delay)

    def refund(self, records: int) -> None:
        """Give back the time of records that needed no start (already present)."""
        if self.rate is not None:
            self._next = max(time.monotonic(), self._next - records / self.rate)


class Redrive:
    """One re-drive: plan its spans (:meth:`plan`), then read and hand off (:meth:`run`)."""

    def __init__(
        self,
        client: Client,
        config: CourierConfig,
        *,
        destination: str,
        run_id: str,
        starts: list[Start] | None = None,
        from_time: datetime | None = None,
        to_time: datetime | None = None,
        topics: list[str] | None = None,
        new_idempotency_key: bool = False,
        dry_run: bool = False,
        rate: float | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.policy = config.destination(destination).policy()
        redrive_group(config.kafka.group, run_id)  # checks the run ID
        if bool(starts) == (from_time is not None):
            raise RedriveError("give either --from-offset (one or more) or --from-time")
        if from_time is not None and to_time is not None and to_time <= from_time:
            raise RedriveError("--to-time must be later than --from-time")
        self.starts = starts or []
        self.from_time = from_time
        self.to_time = to_time
        self.topics = topics or list(config.kafka.topics)
        self.new_key = new_idempotency_key
        self.router = Router(config.routes)
        self.summary = RedriveSummary(
            run_id=run_id,
            destination=destination,
            mode=config.ingest.mode,
            dry_run=dry_run,
            rate=rate,
        )
        self._explicit_rate = rate
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Redrive:
        self._consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **consumer_options(self.config.kafka, group=False),
        )
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "use Redrive in `async with`"
        return self._consumer

    async def plan(self) -> list[Span]:
        """The spans to read (offsets resolved from times), and the pace of the starts."""
        consumer = self.consumer
        wanted: dict[TopicPartition, int | None] = {}
        if self.starts:
            for start in self.starts:
                wanted[TopicPartition(start.topic, start.partition)] = start.offset
        else:
            if not self.topics:
                raise RedriveError(
                    "no topics to read: the config subscribes by pattern; name them with --topic"
                )
            cluster = await consumer._client.fetch_all_metadata()
            for topic in self.topics:
                for partition in sorted(cluster.partitions_for_topic(topic) or ()):
                    wanted[TopicPartition(topic, partition)] = None
        names = sorted({tp.topic for tp in wanted})
        ids = (await TopicIds(consumer._client).refresh(names)).ids
        missing = [t for t in names if ids.get(t) is None]
        if missing:
            raise RedriveError(f"topic {', '.join(missing)} does not exist in Kafka")
        cluster = await consumer._client.fetch_all_metadata()
        for tp in wanted:
            partitions = cluster.partitions_for_topic(tp.topic) or set()
            if tp.partition not in partitions:
                raise RedriveError(
                    f"{tp.topic} has no partition {tp.partition} (it has {len(partitions)})"
                )
        tps = list(wanted)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        if self.from_time is not None:
            found = await consumer.offsets_for_times(
                {tp: int(self.from_time.timestamp() * 1000) for tp in tps}
            )
            for tp in tps:
                wanted[tp] = found[tp].offset if found[tp] is not None else end[tp]
        if self.to_time is not None:
            until = await consumer.offsets_for_times(
                {tp: int(self.to_time.timestamp() * 1000) for tp in tps}
            )
            for tp in tps:
                if until[tp] is not None:
                    end[tp] = until[tp].offset
        spans = []
        for tp in sorted(tps, key=lambda t: (t.topic, t.partition)):
            first = wanted[tp]
            assert first is not None
            if first < begin[tp]:
                self.summary.notes.append(
                    f"{tp.topic}/{tp.partition} starts at offset {begin[tp]} (retention): "
                    f"offsets {first}..{begin[tp] - 1} are no longer in Kafka"
                )
                first = begin[tp]
            spans.append(Span(tp.topic, ids[tp.topic] or "", tp.partition, first, end[tp]))
        self.summary.spans = spans
        if self._explicit_rate is None:
            self.summary.rate = await self._destination_rate()
        return spans

    async def _destination_rate(self) -> float | None:
        """The destination's rate limit in force, in records/s (None: unlimited).

        The queue's limit as the server applies it (an operator's or rate control's override,
        or the workers'); with neither, e.g. while no worker polls, the configured limit.
        """
        queue = await describe(self.client, self.policy.task_queue)
        if queue.rate_limit is None:
            return self.config.destination(self.policy.name).rate_limit
        return queue.rate_limit

    async def run(self, on_read: Callable[[int], None] | None = None) -> RedriveSummary:
        """Read the spans, hand off the destination's records; ``on_read(n)`` after each batch."""
        spans = self.summary.spans or await self.plan()
        todo = {TopicPartition(s.topic, s.partition): s for s in spans if s.size > 0}
        consumer = self.consumer
        pacer = _Pacer(self.summary.rate)
        starts: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(MAX_STARTS_IN_FLIGHT)
        blocks: dict[TopicPartition, tuple[int, list[int]]] = {}
        if not todo:
            return self.summary
        consumer.assign(list(todo))
        for tp, span in todo.items():
            consumer.seek(tp, span.start)
        last_progress = {tp: time.monotonic() for tp in todo}
        try:
            while todo:
                batch = await consumer.getmany(*todo, timeout_ms=500, max_records=500)
                read = 0
                for tp, records in batch.items():
                    current = todo.get(tp)
                    if current is None:
                        continue
                    for record in records:
                        if record.offset >= current.end:
                            break
                        read += 1
                        await self._record(record, current, pacer, slots, starts, blocks)
                self.summary.read += read
                if on_read is not None and read:
                    on_read(read)
                now = time.monotonic()
                for tp in list(todo):
                    position = await consumer.position(tp)
                    if batch.get(tp):
                        last_progress[tp] = now
                    if position >= todo[tp].end:
                        del todo[tp]
                    elif now - last_progress[tp] > _STALL_S:
                        self.summary.notes.append(
                            f"{tp.topic}/{tp.partition}: nothing more to read after offset "
                            f"{position - 1} (end {todo[tp].end}; transaction markers or "
                            "aborted records)"
                        )
                        del todo[tp]
                    if tp not in todo:
                        await self._flush_block(tp, spans, pacer, blocks)
                consumer.pause(*[tp for tp in consumer.assignment() if tp not in todo])
            if starts:
                await asyncio.gather(*starts)
        finally:
            for task in starts:
                task.cancel()
        return self.summary

    async def _record(
        self,
        record: ConsumerRecord,
        span: Span,
        pacer: _Pacer,
        slots: asyncio.Semaphore,
        starts: set[asyncio.Task[None]],
        blocks: dict[TopicPartition, tuple[int, list[int]]],
    ) -> None:
        whole = to_kafka_record(record, span.topic_id) if self.router.needs_record else None
        decision = self.router.decide(record.key, whole)
        if decision.destination != self.policy.name:
            return
        self.summary.routed += 1
        group, run = self.config.kafka.group, self.summary.run_id
        topic, partition, offset = record.topic, record.partition, record.offset
        original = workflow_id(
            group=group, topic=topic, topic_id=span.topic_id, partition=partition, offset=offset
        )
        rid = redrive_workflow_id(
            group=group,
            run_id=run,
            topic=topic,
            topic_id=span.topic_id,
            partition=partition,
            offset=offset,
        )
        if self.summary.dry_run:
            if len(self.summary.first) < SHOWN_RECORDS:
                self.summary.first.append(
                    RoutedRecord(
                        coordinates=f"{record.topic}/{record.partition}/{record.offset}",
                        key=key_text(record.key),
                        timestamp=datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(
                            timespec="milliseconds"
                        ),
                        workflow_id=rid,
                        idempotency_key=rid if self.new_key else original,
                    )
                )
            return
        if self.config.ingest.mode == "batch":
            tp = TopicPartition(record.topic, record.partition)
            block = record.offset // RANGE_BLOCK
            current = blocks.get(tp)
            if current is not None and current[0] != block:
                await self._flush_block(tp, self.summary.spans, pacer, blocks)
            blocks.setdefault(tp, (block, []))[1].append(record.offset)
            return
        await pacer.take(1)
        await slots.acquire()
        task = asyncio.create_task(self._hand_off(record, span, decision, rid, original, pacer))
        starts.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            starts.discard(finished)
            slots.release()

        task.add_done_callback(done)

    async def _hand_off(
        self,
        record: ConsumerRecord,
        span: Span,
        decision: RouteDecision,
        rid: str,
        original: str,
        pacer: _Pacer,
    ) -> None:
        result = await hand_off(
            self.client,
            self.config,
            record,
            span.topic_id,
            decision,
            wid=rid,
            idempotency_key=None if self.new_key else original,
        )
        if not result.started:
            self.summary.already_present += 1
            pacer.refund(1)
            return
        if result.failed_reason is not None:
            self.summary.failed_hand_offs += 1
        else:
            self.summary.started += 1

    async def _flush_block(
        self,
        tp: TopicPartition,
        spans: list[Span],
        pacer: _Pacer,
        blocks: dict[TopicPartition, tuple[int, list[int]]],
    ) -> None:
        """Batch mode: start the range of the destination's records of ``tp``'s open block."""
        found = blocks.pop(tp, None)
        if found is None or not found[1]:
            return
        block, offsets = found
        span = next(s for s in spans if (s.topic, s.partition) == (tp.topic, tp.partition))
        group, run = self.config.kafka.group, self.summary.run_id
        workflow_input = ExportRangeInput(
            group=redrive_group(group, run) if self.new_key else group,
            topic=tp.topic,
            topic_id=span.topic_id,
            partition=tp.partition,
            first_offset=offsets[0],
            last_offset=offsets[-1],
            slices=[RangeSlice(destination=self.policy, offsets=offsets)],
        )
        wid = range_workflow_id(
            group=redrive_group(group, run),
            topic=tp.topic,
            topic_id=span.topic_id,
            partition=tp.partition,
            first=block * RANGE_BLOCK,
        )
        await pacer.take(len(offsets))
        if (
            await start_range(self.client, self.config, wid, workflow_input, max_backoff=30.0)
            is None
        ):
            self.summary.started += len(offsets)
        else:
            self.summary.already_present += len(offsets)
            pacer.refund(len(offsets))


def default_run_id() -> str:
    """A new run ID from the current time, e.g. ``20261127T091500Z``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


async def execute(redrive: Redrive, out: Output, *, as_json: bool) -> RedriveSummary:
    """Plan and run a re-drive with a progress bar (none with ``as_json``); print its summary
    (``as_json``: one JSON object, docs/cli-json.md)."""
    console = out.out
    spans = await redrive.plan()
    summary = redrive.summary
    total = sum(s.size for s in spans)
    if as_json:
        await redrive.run()
    else:
        pace = "unpaced" if summary.rate is None else f"starts paced at {summary.rate:g} records/s"
        console.print(
            f"re-drive {summary.run_id} of {summary.destination} ({summary.mode} mode, "
            f"{'dry run' if summary.dry_run else pace}): {total:,} offsets in "
            f"{sum(1 for s in spans if s.size)} partition(s)",
            highlight=False,
        )
        with Progress(
            *Progress.get_default_columns(), TextColumn("{task.fields[counts]}"), console=console
        ) as progress:
            task = progress.add_task("reading", total=total, counts="")

            def advance(read: int) -> None:
                progress.update(
                    task,
                    advance=read,
                    counts=f"routed {summary.routed:,} · started {summary.started:,} · "
                    f"present {summary.already_present:,}",
                )

            await redrive.run(advance)
            progress.update(task, completed=total)
    if as_json:
        out.write_json(summary.as_dict())
        return summary
    for note in summary.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if summary.dry_run:
        console.print(
            f"dry run: read {summary.read:,}, routed to {summary.destination} {summary.routed:,}; "
            "nothing started",
            highlight=False,
        )
        if summary.first:
            table = Table("record", "key", "timestamp", "would start", "idempotency key")
            for r in summary.first:
                table.add_row(
                    r.coordinates,
                    r.key or "(null)",
                    r.timestamp,
                    r.workflow_id,
                    "same as ID" if r.idempotency_key == r.workflow_id else r.idempotency_key,
                )
            console.print(table)
        return summary
    console.print(
        f"read {summary.read:,}, routed to {summary.destination} {summary.routed:,}, started "
        f"{summary.started:,}, already present {summary.already_present:,}"
        + (
            f", failed at hand-off {summary.failed_hand_offs:,} (Failed workflows with the reason)"
            if summary.failed_hand_offs
            else ""
        ),
        highlight=False,
    )
    console.print(
        f"run ID {summary.run_id}: run again with --run-id {summary.run_id} to resume; "
        "nothing is started twice",
        highlight=False,
        markup=False,
    )
    return summary


async def command(
    client: Client,
    config: CourierConfig,
    *,
    destination: str,
    run_id: str,
    starts: list[Start],
    from_time: datetime | None,
    to_time: datetime | None,
    topics: list[str] | None,
    new_idempotency_key: bool,
    dry_run: bool,
    rate: float | None,
    as_json: bool,
    out: Output,
) -> int:
    """``courier redrive``: run the re-drive as asked (see :func:`execute`), or say why not."""
    try:
        async with Redrive(
            client,
            config,
            destination=destination,
            run_id=run_id,
            starts=starts,
            from_time=from_time,
            to_time=to_time,
            topics=topics,
            new_idempotency_key=new_idempotency_key,
            dry_run=dry_run,
            rate=rate,
        ) as job:
            await execute(job, out, as_json=as_json)
    except RedriveError as err:
        return out.fail(str(err))
    return 0
