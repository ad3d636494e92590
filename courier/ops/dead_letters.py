"""``courier failures --dead-letter`` and ``courier replay --dead-letter``: a dead-letter topic,
summarised like ``courier failures``, and its records exported again.

Entries are read with ``ingest.dead_letter.parse_entry`` (records Courier did not write are
passed over) and deduplicated on their identity (``courier.idempotency_key``), the latest
failure kept.

A replay starts each entry's ``ExportRecord`` again under its original workflow ID and
idempotency key, with the record's bytes from the entry in the workflow input (the source topic
may have lost them), so destinations that saw the record before recognise it. It starts with
``ALLOW_DUPLICATE_FAILED_ONLY``: a workflow that failed, was terminated or that Temporal has
forgotten (retention) starts again; one that completed since (``courier replay``) or is running
is left alone. The record goes to the destination it failed at (if still configured), else
where today's routes send it. Entries without the record (``courier.record_missing``) and
records with no route today are reported, not started.

Resumable: a replay reads with a consumer group of its own, named after its run ID
(``<group>-dead-letter-<run-id>``), and commits as it goes; the same ``--run-id`` goes on where
an interrupted run stopped. Starting again is harmless anyway: what exists is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from rich.progress import Progress, TextColumn
from rich.table import Table
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from courier.config.model import CourierConfig, KafkaConfig
from courier.core.durations import parse_duration
from courier.core.ids import check_run_id
from courier.core.output import Output, iso_time
from courier.ops.failures import FailureGroup, failures_json, generalise, render
from ingest.dead_letter import DeadLetterEntry, parse_entry
from ingest.handoff import TRANSIENT_STATUSES, RecordRejected, checked_input, search_attributes
from ingest.kafka import KafkaUnreachable, check_brokers, consumer_options
from ingest.routing import RouteDecision, Router
from workflows.export_record import ExportRecord
from workflows.types import Blob, Header, KafkaRecord

SHOWN_ENTRIES = 10
"""Entries a dry run lists."""
STARTS_IN_FLIGHT = 16
_STALL_S = 10.0
_MAX_BACKOFF_S = 30.0


class DeadLetterError(Exception):
    """The dead-letter topic cannot be read as asked; the message says why."""


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """``--since``/``--until``: a period ago (``1h``, ``30m``) or an ISO 8601 time (no offset:
    UTC); ValueError saying what is expected."""
    try:
        period: timedelta = parse_duration(text)
    except ValueError:
        pass
    else:
        return (now or datetime.now(UTC)) - period
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a period (30m, 1h, 2h30m) nor an ISO 8601 time "
            "(2026-11-27T09:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def replay_group(config: CourierConfig, run_id: str) -> str:
    """The consumer group a dead-letter replay commits its progress in."""
    return f"{config.kafka.group}-dead-letter-{check_run_id(run_id)}"


@dataclass(frozen=True)
class Selection:
    """Which entries a command takes: one destination's, failed within a period."""

    destination: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, entry: DeadLetterEntry) -> bool:
        """Whether ``entry`` is selected (the time is its last failure's)."""
        if self.destination is not None and entry.destination != self.destination:
            return False
        when = entry.last_failure or datetime.fromtimestamp(entry.timestamp_ms / 1000, UTC)
        if self.since is not None and when < self.since:
            return False
        return self.until is None or when < self.until


class DeadLetterReader:
    """Reads a dead-letter topic from a position to its end as of the start (a group's
    committed offsets, or the beginning)."""

    def __init__(self, config: CourierConfig, topic: str, *, group: str | None = None) -> None:
        self.kafka: KafkaConfig = config.dead_letter.cluster(config.kafka)
        self.topic = topic
        self.group = group
        self._consumer: AIOKafkaConsumer | None = None
        self.partitions: list[TopicPartition] = []
        self.ends: dict[TopicPartition, int] = {}

    async def __aenter__(self) -> DeadLetterReader:
        try:
            await check_brokers(self.kafka)
        except KafkaUnreachable as err:
            raise DeadLetterError(str(err)) from None
        consumer = AIOKafkaConsumer(
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **consumer_options(self.kafka, group=self.group is not None),
        )
        await consumer.start()
        self._consumer = consumer
        cluster = await consumer._client.fetch_all_metadata()
        found = cluster.partitions_for_topic(self.topic)
        if not found:
            raise DeadLetterError(
                f"dead-letter topic {self.topic} does not exist in Kafka at "
                f"{self.kafka.bootstrap_servers}"
            )
        self.partitions = [TopicPartition(self.topic, p) for p in sorted(found)]
        consumer.assign(self.partitions)
        self.ends = await consumer.end_offsets(self.partitions)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "use DeadLetterReader in `async with`"
        return self._consumer

    async def remaining(self) -> int:
        """Offsets between the position and the end, over all partitions."""
        total = 0
        for tp in self.partitions:
            position: int = await self.consumer.position(tp)
            total += max(0, self.ends[tp] - position)
        return total

    async def read(
        self, handle: Callable[[TopicPartition, list[ConsumerRecord]], Awaitable[None]]
    ) -> None:
        """Call ``handle`` with each partition's next records until every partition is read."""
        consumer = self.consumer
        todo = {tp for tp in self.partitions if await consumer.position(tp) < self.ends[tp]}
        progress = dict.fromkeys(todo, time.monotonic())
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=500, max_records=500)
            for tp, records in batch.items():
                mine = [r for r in records if r.offset < self.ends[tp]]
                if mine:
                    progress[tp] = time.monotonic()
                    await handle(tp, mine)
            for tp in list(todo):
                if await consumer.position(tp) >= self.ends[tp]:
                    todo.discard(tp)
                elif time.monotonic() - progress[tp] > _STALL_S:  # transaction markers only
                    todo.discard(tp)


def latest_by_identity(entries: list[DeadLetterEntry]) -> list[DeadLetterEntry]:
    """One entry per record identity: its latest failure."""
    found: dict[str, DeadLetterEntry] = {}
    for entry in entries:
        seen = found.get(entry.idempotency_key)
        if seen is None or _when(entry) >= _when(seen):
            found[entry.idempotency_key] = entry
    return list(found.values())


def _when(entry: DeadLetterEntry) -> datetime:
    return entry.last_failure or datetime.fromtimestamp(entry.timestamp_ms / 1000, UTC)


def group_entries(entries: list[DeadLetterEntry]) -> list[FailureGroup]:
    """Entries by destination and reason (as ``courier failures`` groups), largest first."""
    groups: dict[tuple[str, str], FailureGroup] = {}
    for entry in entries:
        key = None if entry.key is None else entry.key.decode("utf-8", errors="backslashreplace")
        destination = entry.destination or "(no route)"
        reason = generalise(entry.reason, entry.coordinates, key)
        group = groups.setdefault((destination, reason), FailureGroup(destination, reason))
        group.count += 1
        group.workflow_ids.add(entry.workflow_id or entry.idempotency_key)
        first, last = entry.first_failure or _when(entry), _when(entry)
        if group.first_seen is None or first < group.first_seen:
            group.first_seen = first
        if group.last_seen is None or last >= group.last_seen:
            group.last_seen = last
            group.example_id = entry.workflow_id or entry.idempotency_key
            group.example_record = entry.coordinates
    return sorted(groups.values(), key=lambda g: (-g.count, g.destination, g.reason))


async def failures_command(
    config: CourierConfig,
    topic: str,
    *,
    selection: Selection,
    as_json: bool,
    out: Output,
) -> int:
    """``courier failures --dead-letter TOPIC``: its records grouped as ``courier failures``
    groups failed workflows (one per record identity, its latest failure)."""
    entries: list[DeadLetterEntry] = []
    foreign = 0

    async def collect(tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        nonlocal foreign
        for record in records:
            entry = parse_entry(record)
            if entry is None:
                foreign += 1
            elif selection.matches(entry):
                entries.append(entry)

    try:
        async with DeadLetterReader(config, topic) as reader:
            await reader.read(collect)
    except DeadLetterError as err:
        return out.fail(str(err))
    latest = latest_by_identity(entries)
    groups = group_entries(latest)
    repeats = len(entries) - len(latest)
    if as_json:
        out.write_json(failures_json(groups, topic=topic, repeats=repeats, foreign=foreign))
    elif not groups:
        out.out.print(f"no dead letters in {topic} match", highlight=False)
    else:
        render(groups, out.out)
        if repeats:
            out.out.print(
                f"({repeats} more entries repeat a record listed: the latest failure counts)",
                highlight=False,
            )
    if foreign:
        out.warning(f"{topic}: {foreign} record(s) without Courier's failure headers, passed over")
    return 0


@dataclass
class ReplaySummary:
    """What a dead-letter replay read and did."""

    run_id: str
    topic: str
    dry_run: bool
    read: int = 0
    selected: int = 0
    started: int = 0
    present: int = 0
    """Records whose workflow exists and did not fail (exported since, or being exported)."""
    repeats: int = 0
    """Entries of a record this run had met already."""
    missing: list[str] = field(default_factory=list)
    """Records whose entry has no bytes (gone from Kafka before they were written)."""
    unroutable: list[str] = field(default_factory=list)
    foreign: int = 0
    errors: list[str] = field(default_factory=list)
    first: list[tuple[DeadLetterEntry, str]] = field(default_factory=list)
    """A dry run's first entries to start, each with the destination it would go to."""


class DeadLetterReplay:
    """One ``courier replay --dead-letter`` run."""

    def __init__(
        self,
        client: Client,
        config: CourierConfig,
        topic: str,
        *,
        selection: Selection,
        run_id: str,
        dry_run: bool = False,
    ) -> None:
        self.client = client
        self.config = config
        # The record travels in the input: the source topic may no longer hold it.
        self.inline = config.model_copy(
            update={"ingest": config.ingest.model_copy(update={"payloads": "inline"})}
        )
        self.topic = topic
        self.selection = selection
        self.router = Router(config.routes)
        self.known = {d.name for d in config.destinations}
        self.summary = ReplaySummary(run_id=run_id, topic=topic, dry_run=dry_run)
        self.group = replay_group(config, run_id)
        self._seen: set[str] = set()

    async def run(self, reader: DeadLetterReader, on_read: Callable[[int], None]) -> None:
        """Read the topic, start the selected records' workflows, commit after each batch."""
        slots = asyncio.Semaphore(STARTS_IN_FLIGHT)

        async def handle(tp: TopicPartition, records: list[ConsumerRecord]) -> None:
            todo = [e for e in (self._select(r) for r in records) if e is not None]

            async def one(entry: DeadLetterEntry) -> None:
                async with slots:
                    await self._replay(entry)

            errors = len(self.summary.errors)
            await asyncio.gather(*(one(e) for e in todo))
            if len(self.summary.errors) > errors:
                raise DeadLetterError("; ".join(self.summary.errors[errors:]))
            if not self.summary.dry_run:
                await reader.consumer.commit({tp: records[-1].offset + 1})
            on_read(len(records))

        await reader.read(handle)

    def _select(self, record: ConsumerRecord) -> DeadLetterEntry | None:
        summary = self.summary
        summary.read += 1
        entry = parse_entry(record)
        if entry is None:
            summary.foreign += 1
            return None
        if not self.selection.matches(entry):
            return None
        summary.selected += 1
        if entry.idempotency_key in self._seen:
            summary.repeats += 1
            return None
        self._seen.add(entry.idempotency_key)
        if entry.record_missing is not None or entry.topic_id is None:
            summary.missing.append(
                f"{entry.coordinates}: {entry.record_missing or 'no topic ID'} ({entry.entry})"
            )
            return None
        return entry

    def decide(self, entry: DeadLetterEntry, record: KafkaRecord) -> RouteDecision:
        """The destination it failed at, if still configured; else today's route."""
        if entry.destination is not None and entry.destination in self.known:
            return RouteDecision("export", entry.destination, "the destination it failed at")
        return self.router.decide(entry.key, record)

    async def _replay(self, entry: DeadLetterEntry) -> None:
        summary = self.summary
        record = _kafka_record(entry)
        decision = self.decide(entry, record)
        if decision.destination is None:
            summary.unroutable.append(f"{entry.coordinates}: {decision.reason}")
            return
        if summary.dry_run:
            if len(summary.first) < SHOWN_ENTRIES:
                summary.first.append((entry, decision.destination))
            summary.started += 1
            return
        wid = entry.workflow_id or entry.idempotency_key
        consumed = ConsumerRecord(
            entry.topic,
            entry.partition,
            entry.offset,
            entry.timestamp_ms,
            0,
            entry.key,
            entry.value,
            None,
            len(entry.key or b""),
            len(entry.value or b""),
            entry.headers,
        )
        assert entry.topic_id is not None  # _select passed it
        try:
            workflow_input = await checked_input(
                self.client,
                self.inline,
                consumed,
                entry.topic_id,
                decision,
                idempotency_key=None if entry.idempotency_key == wid else entry.idempotency_key,
            )
        except RecordRejected as err:
            summary.errors.append(f"{entry.coordinates}: {err}")
            return
        attributes = search_attributes(
            consumed, decision, with_key=self.config.temporal.encryption is None
        )
        delay = 0.5
        while True:
            try:
                await self.client.start_workflow(
                    ExportRecord.run,
                    workflow_input,
                    id=wid,
                    task_queue=self.config.temporal.workflow_task_queue,
                    # A workflow that failed (or was forgotten) starts again; one that
                    # completed or runs is left alone.
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    search_attributes=attributes,
                    static_summary=f"replayed from dead-letter topic {self.topic}"[:200],
                )
            except WorkflowAlreadyStartedError:
                summary.present += 1
                return
            except RPCError as err:
                if err.status not in TRANSIENT_STATUSES:
                    summary.errors.append(f"{entry.coordinates}: {err.status.name}: {err}")
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)
                continue
            summary.started += 1
            return


def _kafka_record(entry: DeadLetterEntry) -> KafkaRecord:
    return KafkaRecord(
        topic=entry.topic,
        topic_id=entry.topic_id,
        partition=entry.partition,
        offset=entry.offset,
        key=None if entry.key is None else Blob.of(entry.key),
        value=None if entry.value is None else Blob.of(entry.value),
        timestamp_ms=entry.timestamp_ms,
        headers=[Header(n, None if v is None else Blob.of(v)) for n, v in entry.headers],
    )


def replay_json(summary: ReplaySummary, *, entries: int, declined: bool) -> dict[str, object]:
    """What ``courier replay --dead-letter TOPIC --json`` prints (docs/cli-json.md)."""
    return {
        "source": "dead_letter",
        "topic": summary.topic,
        "run_id": summary.run_id,
        "dry_run": summary.dry_run,
        "entries": entries,
        "read": summary.read,
        "selected": summary.selected,
        "declined": declined,
        "replayed": summary.started,
        "already_present": summary.present,
        "repeats": summary.repeats,
        "missing": summary.missing,
        "unroutable": summary.unroutable,
        "foreign": summary.foreign,
        "errors": summary.errors,
        "first": [
            {
                "record": entry.coordinates,
                "destination": destination,
                "identity": entry.idempotency_key,
                "failed": iso_time(entry.last_failure),
                "reason": entry.reason,
            }
            for entry, destination in summary.first
        ],
    }


async def replay_command(
    client: Client,
    config: CourierConfig,
    topic: str,
    *,
    selection: Selection,
    run_id: str,
    dry_run: bool,
    confirm: Callable[[str], bool] | None,
    out: Output,
    as_json: bool = False,
) -> int:
    """``courier replay --dead-letter TOPIC``: export its records again with a progress bar,
    then say what was done (``as_json``: one JSON object, no progress bar); exit 1 if something
    could not be started or the operator said no."""
    job = DeadLetterReplay(
        client, config, topic, selection=selection, run_id=run_id, dry_run=dry_run
    )
    summary = job.summary
    total = 0
    try:
        async with DeadLetterReader(config, topic, group=job.group) as reader:
            total = await reader.remaining()
            if total == 0:
                if as_json:
                    out.write_json(replay_json(summary, entries=0, declined=False))
                else:
                    out.out.print(
                        f"nothing to replay: {topic} has no entries after run {run_id}'s position",
                        highlight=False,
                    )
                return 0
            question = (
                f"Replay the dead letters of {topic} ({total:,} entries from run {run_id}'s "
                "position)?"
            )
            if not dry_run and confirm is not None and not confirm(question):
                if as_json:
                    out.write_json(replay_json(summary, entries=total, declined=True))
                return 1
            with contextlib.ExitStack() as stack:
                progress = (
                    None
                    if as_json
                    else stack.enter_context(
                        Progress(
                            *Progress.get_default_columns(),
                            TextColumn("{task.fields[counts]}"),
                            console=out.out,
                        )
                    )
                )
                task = progress.add_task("replaying", total=total, counts="") if progress else None

                def advance(read: int) -> None:
                    if progress is not None and task is not None:
                        progress.update(
                            task,
                            advance=read,
                            counts=f"started {summary.started:,} · present {summary.present:,}",
                        )

                with contextlib.suppress(DeadLetterError):  # reported below
                    await job.run(reader, advance)
    except DeadLetterError as err:
        return out.fail(str(err))
    if as_json:
        out.write_json(replay_json(summary, entries=total, declined=False))
        _warn(summary, out)
    else:
        _report(summary, out)
    return 1 if summary.errors else 0


def _report(summary: ReplaySummary, out: Output) -> None:
    print_ = out.out.print
    if summary.dry_run:
        print_(
            f"dry run: read {summary.read:,}, selected {summary.selected:,}, would start "
            f"{summary.started:,}; nothing started",
            highlight=False,
        )
        if summary.first:
            table = Table("record", "to", "identity", "failed", "reason")
            for e, destination in summary.first:
                table.add_row(
                    e.coordinates,
                    destination,
                    e.idempotency_key,
                    e.last_failure.isoformat(timespec="seconds") if e.last_failure else "-",
                    e.reason,
                )
            print_(table)
    else:
        print_(
            f"read {summary.read:,}, selected {summary.selected:,}, started {summary.started:,}, "
            f"already there {summary.present:,} (exported since, or being exported)"
            + (f", repeats {summary.repeats:,}" if summary.repeats else ""),
            highlight=False,
        )
    _warn(summary, out)
    if not summary.dry_run:
        print_(
            f"run ID {summary.run_id}: run again with --run-id {summary.run_id} to resume; "
            "nothing is started twice",
            highlight=False,
            markup=False,
        )


def _warn(summary: ReplaySummary, out: Output) -> None:
    """The replay's warnings and errors, one line each on stderr."""
    for line in summary.missing:
        out.warning(f"cannot replay {line}: the entry has no record")
    for line in summary.unroutable:
        out.warning(f"not replayed {line}")
    if summary.foreign:
        out.warning(f"{summary.foreign} record(s) without Courier's failure headers, passed over")
    for line in summary.errors:
        out.error(line)
