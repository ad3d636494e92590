"""The ingest loop: consume, route, hand off to Temporal, commit only what is safe.

Lifecycle, in order (as Kafka Connect's ``SinkTask``):

1. Subscribe with auto-commit off, read-committed by default, never creating topics.
2. Poll. Fetched records wait in a per-partition buffer; a partition with buffered records is
   paused, so the loop keeps polling (and stays in its group) however long Temporal takes.
3. After every fetch, look up the topics' IDs (Kafka's topic UUIDs). A record is handed off
   under the ID its topic has *after* it was fetched, so it is never attributed to an older
   incarnation of a recreated topic. A topic whose ID changed was deleted and created again:
   one WARNING, its partitions restart at their committed offset (the group's offsets of a
   deleted topic are gone, so: the beginning). Commits carry the topic ID, and a partition's
   records are handed off only once the offset it was positioned at is known to belong to the
   topic's current ID (``ingest.incarnations``); one committed for an earlier topic of the same
   name is passed over and the partition read from the beginning.
4. Hand records off concurrently (at most ``kafka.max_in_flight`` at once), each starting its
   workflow (``ingest.handoff``, whose failure contract says what happens when that fails).
5. Every ``kafka.commit_interval``: commit each partition's safe point — the lowest offset
   still in flight, or one past the last record begun (see ``ingest.offsets``).
6. On revoke: drop the revoked partitions' buffered records, wait (bounded) for their
   hand-offs in flight, commit them unless their topic was deleted or recreated meanwhile,
   forget them; the next owner reads the rest again.
7. On stop (SIGTERM): stop reading, wait (briefly) for hand-offs in flight, commit, leave the
   group, all within about 2 s; a stop while still connecting to Kafka ends the attempt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from temporalio.client import Client

from courier import metrics
from courier.config import CourierConfig
from courier.stopping import unless_stopped
from ingest.handoff import coordinates, hand_off, to_kafka_record
from ingest.incarnations import commit_metadata, fetch_committed
from ingest.kafka import KafkaUnreachable, check_brokers, consumer_options, never_create_topics
from ingest.offsets import OffsetTracker
from ingest.ordered import ChainBroken, KeyChains, Turn, hand_off_ordered, ordered_chain
from ingest.priority import DestinationLoad, record_priority
from ingest.ranges import OpenRange, hand_off_range
from ingest.routing import RouteDecision, Router
from ingest.topic_ids import TopicIdError, TopicIds

log = logging.getLogger("courier.ingest")

DRAIN_TIMEOUT_S = 30.0
STOP_DRAIN_S = 1.0
"""On stop, how long hand-offs in flight may take to finish; unfinished ones stay uncommitted
(read again on the next start, and their workflow IDs make that harmless)."""
STOP_KAFKA_S = 0.5
"""On stop, the longest the last commit, and leaving the group, may take each."""
MAX_BACKOFF_S = 30.0
POLL_TIMEOUT_MS = 200
MISSING_TOPIC_LOG_S = 30.0
MAX_RANGES_PER_PARTITION = 4


class Ingest:
    """Consumes the configured topics and starts one workflow per record."""

    def __init__(self, config: CourierConfig, client: Client) -> None:
        self.config = config
        self.client = client
        self.router = Router(config.routes)
        self.load = DestinationLoad(client, config)
        self.tracker = OffsetTracker()
        self.counts: collections.Counter[str] = collections.Counter()
        """Records by outcome (``started``, ``existing``, ``failed``, ``skipped``) and route."""
        self._pending: dict[TopicPartition, collections.deque[ConsumerRecord]] = {}
        self._epoch: collections.Counter[TopicPartition] = collections.Counter()
        self._in_flight = 0
        self._slot_freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._topic_ids: TopicIds | None = None
        self._stopping = asyncio.Event()
        self._missing_logged: dict[str, float] = {}
        self._topics_checked = -MISSING_TOPIC_LOG_S
        self._ids_checked = 0.0
        self._ids_failure_logged = -MISSING_TOPIC_LOG_S
        self._moved = True
        """Whether the last dispatch started or gathered anything (else waiting records are
        blocked on hand-offs in flight or a missing topic, and the loop must not spin)."""
        self._open_ranges: dict[TopicPartition, OpenRange] = {}
        self._ranges_in_flight: collections.Counter[TopicPartition] = collections.Counter()
        self._fresh: set[TopicPartition] = set()
        """Batch mode: partitions where a range was started anew since assignment. Earlier
        runs' ranges are contiguous from the committed offset, so past the first fresh start
        none can follow, and ranges of the partition may be handed off several at a time."""
        self._covered: dict[TopicPartition, int] = {}
        """Batch mode: last offset of a partition that earlier runs' ranges cover."""
        self._seen_ids: dict[str, str] = {}
        """The last ID each topic was seen with (a topic that disappears keeps its entry)."""
        self._checked: dict[TopicPartition, str] = {}
        """The topic ID each partition's read position was checked against: its records are
        handed off, and its offsets committed, only under that ID."""
        self._reposition: set[TopicPartition] = set()
        """Partitions restarted after their topic's ID changed, to be positioned anew."""
        self._chains = KeyChains()
        """Records of ordered destinations: each key's hand-offs one after the other."""

    def assignment(self) -> set[TopicPartition]:
        """The partitions this ingest owns right now."""
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def stop(self) -> None:
        """Ask the loop to finish: it commits what is safe and leaves the group."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`stop` is called (or the task is cancelled)."""
        kafka = self.config.kafka
        never_create_topics()  # in this task only: the consumer's metadata requests inherit it
        consumer = await self._start_consumer()
        if consumer is None:
            return
        self._consumer = consumer
        self._topic_ids = TopicIds(consumer._client)
        committer = asyncio.create_task(self._commit_periodically())
        per_record = self.config.ingest.mode == "per_record"
        watching = (
            asyncio.create_task(self.load.run())
            if per_record and self.config.ingest.fairness
            else None
        )
        log.info(
            "ingest started: group %s, topics %s", kafka.group, kafka.topics or kafka.topic_pattern
        )
        try:
            while not self._stopping.is_set():
                await self._poll_once(consumer)
        finally:
            committer.cancel()
            if watching is not None:
                watching.cancel()
            await self._drain(STOP_DRAIN_S)
            # Bounded: with Kafka gone, aiokafka would wait out its 40 s request timeout.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_KAFKA_S):
                    await self.commit()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_KAFKA_S):
                    await consumer.stop()
            log.info(
                "ingest stopped: %d started, %d already started, %d failed, %d skipped",
                self.counts["started"],
                self.counts["existing"],
                self.counts["failed"],
                self.counts["skipped"],
            )

    async def _poll_once(self, consumer: AIOKafkaConsumer) -> None:
        await self._warn_missing_topics()
        waiting = any(self._pending.values())
        if self._in_flight >= self.config.kafka.max_in_flight or (waiting and not self._moved):
            # Records wait for a hand-off to finish: wait for one (briefly), but keep polling
            # so the group keeps us.
            self._slot_freed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), POLL_TIMEOUT_MS / 1000)
            timeout_ms = 0
        elif waiting:
            timeout_ms = 0
        elif self._open_ranges:
            timeout_ms = min(
                POLL_TIMEOUT_MS, int(self.config.ingest.max_wait.total_seconds() * 1000)
            )
        else:
            timeout_ms = POLL_TIMEOUT_MS
        batches = await consumer.getmany(
            timeout_ms=timeout_ms, max_records=self.config.kafka.max_in_flight
        )
        owned = consumer.assignment()
        fetched = False
        for tp, records in batches.items():
            if tp in owned and records:
                self._pending.setdefault(tp, collections.deque()).extend(records)
                fetched = True
        now = time.monotonic()
        if fetched or (any(self._pending.values()) and now - self._ids_checked >= 1.0):
            self._ids_checked = now
            await self._check_topic_ids(consumer)
        before = self._in_flight, sum(len(r) for r in self._pending.values())
        self._dispatch_pending()
        self._moved = before != (self._in_flight, sum(len(r) for r in self._pending.values()))
        self._pause_buffered(consumer)

    async def _warn_missing_topics(self) -> None:
        """Every 30 s, one WARNING per configured topic that does not exist."""
        now = time.monotonic()
        if not self.config.kafka.topics or now - self._topics_checked < MISSING_TOPIC_LOG_S:
            return
        self._topics_checked = now
        assert self._topic_ids is not None
        try:
            found = await self._topic_ids.refresh(self.config.kafka.topics)
        except (KafkaError, TopicIdError) as err:
            log.warning("cannot look up topics (%s)", err)
            return
        for topic, topic_id in found.ids.items():
            if topic_id is None:
                log.warning(
                    "topic %s does not exist; waiting for it (create it, or fix kafka.topics)",
                    topic,
                )

    def _pause_buffered(self, consumer: AIOKafkaConsumer) -> None:
        owned = consumer.assignment()
        buffered = {tp for tp, records in self._pending.items() if records and tp in owned}
        paused = consumer.paused()
        if buffered - paused:
            consumer.pause(*(buffered - paused))
        if (paused & owned) - buffered:
            consumer.resume(*((paused & owned) - buffered))

    async def _check_topic_ids(self, consumer: AIOKafkaConsumer) -> None:
        """Refresh the IDs of the buffered topics; restart partitions of recreated topics."""
        assert self._topic_ids is not None
        topics = {tp.topic for tp, records in self._pending.items() if records}
        try:
            refresh = await self._topic_ids.refresh(topics)
        except (KafkaError, TopicIdError) as err:
            if time.monotonic() - self._ids_failure_logged >= MISSING_TOPIC_LOG_S:
                self._ids_failure_logged = time.monotonic()
                log.warning("cannot look up topic IDs (%s); fetched records wait", err)
            return
        for topic, new in refresh.ids.items():
            old = self._seen_ids.get(topic)
            if new is None or new == old:
                continue
            self._seen_ids[topic] = new
            if old is None:
                continue
            log.warning(
                "topic %s was deleted and created again (ID %s → %s): its records are "
                "handed off under the new ID, from its committed offset or the beginning",
                topic,
                old,
                new,
            )
            metrics.TOPIC_ID_CHANGES.labels(topic).inc()
            for tp in [tp for tp in consumer.assignment() if tp.topic == topic]:
                self._restart_partition(tp)
                self._reposition.add(tp)
        unchecked = [
            tp
            for tp in consumer.assignment()
            if refresh.ids.get(tp.topic) is not None
            and self._checked.get(tp) != refresh.ids[tp.topic]
        ]
        if unchecked:
            await self._check_positions(consumer, unchecked, refresh.ids)

    async def _check_positions(
        self,
        consumer: AIOKafkaConsumer,
        partitions: list[TopicPartition],
        ids: dict[str, str | None],
    ) -> None:
        """Read ``partitions`` from their committed offset only if it is their topic's own.

        A partition restarted after its topic's ID changed is positioned anew, at its committed
        offset or the beginning; one the consumer positioned at an offset committed under
        another topic ID (an earlier topic of the same name) is read from the beginning instead.
        """
        try:
            committed = await fetch_committed(consumer, partitions)
        except (KafkaError, TimeoutError) as err:
            if time.monotonic() - self._ids_failure_logged >= MISSING_TOPIC_LOG_S:
                self._ids_failure_logged = time.monotonic()
                log.warning("cannot look up committed offsets (%s); fetched records wait", err)
            return
        for tp in partitions:
            topic_id = ids[tp.topic]
            assert topic_id is not None
            found = committed.get(tp)
            if found is not None and not found.belongs_to(topic_id):
                log.warning(
                    "the committed offset %d of %s/%d belongs to an earlier topic of that name "
                    "(ID %s): reading topic ID %s from the beginning",
                    found.offset,
                    tp.topic,
                    tp.partition,
                    found.topic_id,
                    topic_id,
                )
                self._restart_partition(tp)
                await consumer.seek_to_beginning(tp)
            elif tp in self._reposition:
                self._restart_partition(tp)  # drop what was fetched before the seek
                if found is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, found.offset)
            self._reposition.discard(tp)
            self._checked[tp] = topic_id

    def _restart_partition(self, tp: TopicPartition) -> None:
        """Forget what was read of ``tp``: buffered records, offsets, hand-offs in flight."""
        self._pending.pop(tp, None)
        self._open_ranges.pop(tp, None)
        self._covered.pop(tp, None)
        self._fresh.discard(tp)
        self._checked.pop(tp, None)
        self._epoch[tp] += 1
        self.tracker.forget({tp})

    # ------------------------------------------------------------------------------ batch mode
    def _gather_ranges(self) -> None:
        """Move buffered records into each partition's open range (offsets and keys only)."""
        assert self._topic_ids is not None
        max_records = self.config.ingest.max_records
        for tp, records in self._pending.items():
            if not records:
                continue
            topic_id = self._handing_off_as(tp)
            if topic_id is None:
                continue
            open_range = self._open_ranges.get(tp)
            while records:
                record = records[0]
                expected = (
                    open_range.offsets[-1] + 1
                    if open_range is not None and open_range.offsets
                    else self.tracker.next_offset(tp)
                )
                if expected is not None and record.offset < expected:
                    # The partition was rewound (a reset or a seek): start afresh.
                    self._epoch[tp] += 1
                    self.tracker.forget({tp})
                    self._covered.pop(tp, None)
                    self._fresh.discard(tp)
                    self._open_ranges.pop(tp, None)
                    open_range = None
                if record.offset <= self._covered.get(tp, -1):
                    records.popleft()  # in a range an earlier run handed off already
                    self.tracker.begin(tp, record.offset)
                    self.tracker.finish(tp, record.offset)
                    self.counts["existing"] += 1
                    continue
                if open_range is None:
                    open_range = self._open_ranges[tp] = OpenRange()
                if len(open_range.offsets) >= max_records:
                    break
                records.popleft()
                open_range.add(record.offset, self._route_input(record, topic_id))

    def _close_ranges(self) -> None:
        """Hand off ranges that are full or waited long enough, one at a time per partition."""
        assert self._topic_ids is not None
        ingest = self.config.ingest
        max_wait = ingest.max_wait.total_seconds()
        for tp, open_range in list(self._open_ranges.items()):
            if self._in_flight >= self.config.kafka.max_in_flight:
                return
            busy = self._ranges_in_flight[tp]
            if busy and (tp not in self._fresh or busy >= MAX_RANGES_PER_PARTITION):
                continue
            if not open_range.ready(ingest.max_records, max_wait):
                continue
            topic_id = self._handing_off_as(tp)
            if topic_id is None:
                continue
            del self._open_ranges[tp]
            for offset in open_range.offsets:
                self.tracker.begin(tp, offset)
            self._in_flight += 1
            self._ranges_in_flight[tp] += 1
            task = asyncio.create_task(
                self._hand_off_range(tp, open_range, topic_id, self._epoch[tp])
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _hand_off_range(
        self, tp: TopicPartition, open_range: OpenRange, topic_id: str, epoch: int
    ) -> None:
        offsets = open_range.offsets
        delay = 1.0
        try:
            while True:
                try:
                    result = await hand_off_range(
                        self.client,
                        self.config,
                        self.router,
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
            for outcome, count in (
                ("started", result.started),
                ("existing", result.existing),
                ("skipped", result.skipped),
            ):
                self.counts[outcome] += count
                metrics.INGESTED.labels(tp.topic, outcome).inc(count)
            if self._epoch[tp] == epoch:
                for offset in offsets:
                    self.tracker.finish(tp, offset)
                if result.covered_until > offsets[-1]:
                    self._cover(tp, result.covered_until)
                elif result.started:
                    self._fresh.add(tp)
        finally:
            self._in_flight -= 1
            self._ranges_in_flight[tp] -= 1
            self._slot_freed.set()

    def _cover(self, tp: TopicPartition, last: int) -> None:
        """Records up to ``last`` are in a range an earlier run handed off: skip them."""
        self._covered[tp] = last
        open_range = self._open_ranges.get(tp)
        if open_range is None:
            return
        keep = [i for i, offset in enumerate(open_range.offsets) if offset > last]
        for offset in open_range.offsets[: len(open_range.offsets) - len(keep)]:
            self.tracker.begin(tp, offset)
            self.tracker.finish(tp, offset)
            self.counts["existing"] += 1
        open_range.offsets = [open_range.offsets[i] for i in keep]
        open_range.keys = [open_range.keys[i] for i in keep]
        if not open_range.offsets:
            del self._open_ranges[tp]

    def _dispatch_pending(self) -> None:
        """Start hand-offs for buffered records while the window has room, fairly."""
        if self.config.ingest.mode == "batch":
            self._gather_ranges()
            self._close_ranges()
            return
        assert self._topic_ids is not None
        window = self.config.kafka.max_in_flight
        ready = [tp for tp, records in self._pending.items() if records]
        while ready and self._in_flight < window:
            for tp in list(ready):
                records = self._pending[tp]
                topic_id = self._handing_off_as(tp)
                if topic_id is None:
                    ready.remove(tp)
                    continue
                record = records.popleft()
                if not records:
                    ready.remove(tp)
                self._begin(tp, record, topic_id)
                if self._in_flight >= window:
                    return

    def _begin(self, tp: TopicPartition, record: ConsumerRecord, topic_id: str) -> None:
        next_offset = self.tracker.next_offset(tp)
        if next_offset is not None and record.offset < next_offset:
            # The partition was rewound (a reset or a seek): start its offsets afresh.
            self._epoch[tp] += 1
            self.tracker.forget({tp})
        self.tracker.begin(tp, record.offset)
        self._in_flight += 1
        # Claimed here, in offset order, so a key's records are signalled in that order.
        decision = self.router.route(self._route_input(record, topic_id))
        chain = ordered_chain(self.config, record, decision)
        turn = self._chains.claim(chain) if chain is not None else None
        task = asyncio.create_task(
            self._hand_off(tp, record, topic_id, decision, self._epoch[tp], turn)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _route_input(self, record: ConsumerRecord, topic_id: str) -> bytes | RouteDecision | None:
        """The record's key, or its decision already made when a rule needs the whole record."""
        if not self.router.needs_record:
            key: bytes | None = record.key
            return key  # only the key is kept, as a batch range does
        return self.router.decide(record.key, to_kafka_record(record, topic_id))

    def _handing_off_as(self, tp: TopicPartition) -> str | None:
        """The topic ID ``tp``'s records are handed off under now; None while they must wait.

        They wait while the topic does not exist, and until the partition's position was
        checked against the topic's current ID.
        """
        assert self._topic_ids is not None
        topic_id = self._topic_ids.get(tp.topic)
        if topic_id is None:
            self._log_missing_topic(tp.topic)
            return None
        return topic_id if self._checked.get(tp) == topic_id else None

    def _log_missing_topic(self, topic: str) -> None:
        now = time.monotonic()
        if now - self._missing_logged.get(topic, -MISSING_TOPIC_LOG_S) >= MISSING_TOPIC_LOG_S:
            self._missing_logged[topic] = now
            log.warning(
                "topic %s does not exist (deleted?); its fetched records wait for it to "
                "come back or be revoked",
                topic,
            )

    async def _hand_off(
        self,
        tp: TopicPartition,
        record: ConsumerRecord,
        topic_id: str,
        decision: RouteDecision,
        epoch: int,
        turn: Turn | None = None,
    ) -> None:
        delay = 1.0
        handed_off = False
        try:
            if turn is not None:
                await turn.wait()
            while True:
                try:
                    if decision.action == "skip":
                        log.info("skipping %s: %s", coordinates(record), decision.reason)
                        outcome = "skipped"
                    else:
                        destination = decision.destination
                        priority = record_priority(
                            self.config, destination, self.load.congested(destination)
                        )
                        result = await (hand_off_ordered if turn is not None else hand_off)(
                            self.client, self.config, record, topic_id, decision, priority=priority
                        )
                        if result.failed_reason is not None:
                            outcome = "failed"
                        else:
                            outcome = "started" if result.started else "existing"
                        self.counts[f"to:{decision.destination or '(unroutable)'}"] += 1
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug: never lose the record, never drop the error
                    log.exception("hand-off of %s failed; retrying", coordinates(record))
                    metrics.HAND_OFF_FAILURES.labels(record.topic).inc()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF_S)
            handed_off = True
            self.counts[outcome] += 1
            metrics.INGESTED.labels(tp.topic, outcome).inc()
            if self._epoch[tp] == epoch:
                self.tracker.finish(tp, record.offset)
        except ChainBroken as err:  # only when hand-offs are abandoned: left uncommitted
            log.warning("%s not handed off: %s", coordinates(record), err)
        finally:
            if turn is not None:
                turn.release(handed_off)
            self._in_flight -= 1
            self._slot_freed.set()

    def _new_consumer(self) -> AIOKafkaConsumer:
        kafka = self.config.kafka
        consumer = AIOKafkaConsumer(
            group_id=kafka.group,
            enable_auto_commit=False,
            auto_offset_reset=kafka.auto_offset_reset,
            client_id=f"courier-ingest-{kafka.group}",
            **consumer_options(kafka),
        )
        return consumer

    def _subscribe(self, consumer: AIOKafkaConsumer) -> None:
        # After start(): subscribing before would make start() wait for (and, with
        # auto-creation off, fail on) every missing topic. Missing topics are warned about.
        kafka = self.config.kafka
        listener = _Rebalance(self)
        if kafka.topic_pattern:
            consumer.subscribe(pattern=kafka.topic_pattern, listener=listener)
        else:
            consumer.subscribe(topics=kafka.topics, listener=listener)

    async def _start_consumer(self) -> AIOKafkaConsumer | None:
        """A started consumer; retries while Kafka is unreachable (None once stopped).

        Each attempt first checks that a bootstrap server answers as Kafka (seconds, where
        aiokafka would wait 40 s); :meth:`stop` interrupts an attempt at once.
        """
        delay = 1.0
        while not self._stopping.is_set():
            consumer = await unless_stopped(self._try_start(delay), self._stopping)
            if consumer is not None:
                return consumer
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
        return None

    async def _try_start(self, delay: float) -> AIOKafkaConsumer | None:
        """One attempt: a started, subscribed consumer, or None after one WARNING line."""
        kafka = self.config.kafka
        try:
            await check_brokers(kafka)
        except KafkaUnreachable as err:
            log.warning("%s; retrying in %.0fs", err, delay)
            return None
        consumer = self._new_consumer()
        try:
            await consumer.start()
            self._subscribe(consumer)
            return consumer
        except KafkaConnectionError as err:
            await consumer.stop()
            log.warning(
                "cannot start consuming from Kafka at %s (%s); retrying in %.0fs",
                kafka.bootstrap_servers,
                err,
                delay,
            )
            return None
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(STOP_KAFKA_S):
                    await consumer.stop()
            raise

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit the safe point of every owned partition (or only of ``partitions``)."""
        if self._consumer is None:
            return
        owned = self._consumer.assignment() if partitions is None else partitions
        assert self._topic_ids is not None
        offsets = {
            tp: off
            for tp, off in self.tracker.committable().items()
            if tp in owned and self._checked.get(tp) == self._topic_ids.get(tp.topic)
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(
                {tp: (off, commit_metadata(self._checked[tp])) for tp, off in offsets.items()}
            )
        except KafkaError as err:
            log.warning("commit failed (%s); offsets stay uncommitted and are retried", err)
            return
        self.tracker.mark_committed(offsets)
        metrics.COMMITS.inc()
        log.debug("committed %s", {f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()})

    async def _commit_periodically(self) -> None:
        interval = self.config.kafka.commit_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.commit()
            except Exception:  # never let the committer die silently
                log.exception("periodic commit failed; retrying at the next interval")

    async def _drain(self, timeout: float) -> None:
        pending = set(self._tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                log.warning(
                    "%d hand-offs unfinished after %.0fs; left uncommitted", len(still), timeout
                )
                for task in still:
                    task.cancel()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Drop buffered records of ``revoked``, finish (bounded) their hand-offs, commit."""
        for tp in revoked:
            self._pending.pop(tp, None)
            self._open_ranges.pop(tp, None)  # never begun: the next owner reads them again
            self._covered.pop(tp, None)
            self._fresh.discard(tp)
        loop = asyncio.get_running_loop()
        # Well inside the rebalance timeout (max_poll_interval), or the group evicts us.
        wait_s = min(DRAIN_TIMEOUT_S, self.config.kafka.max_poll_interval.total_seconds() / 3)
        deadline = loop.time() + wait_s
        while self.tracker.in_flight(revoked) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.tracker.in_flight(revoked):
            log.warning(
                "%d hand-offs of revoked partitions unfinished after %.0fs; their offsets stay "
                "uncommitted and the next owner reads them again",
                self.tracker.in_flight(revoked),
                wait_s,
            )
        await self._refresh_ids({tp.topic for tp in revoked})
        await self.commit(revoked)
        for tp in revoked:
            self._epoch[tp] += 1
            self._checked.pop(tp, None)
            self._reposition.discard(tp)
        self.tracker.forget(revoked)

    async def _refresh_ids(self, topics: set[str]) -> None:
        """Look up ``topics``' IDs now (bounded): a commit then skips deleted or recreated ones.

        Commits carry their topic ID, so one that slips through is still passed over by the
        next reader; this only keeps the group's offsets clean.
        """
        if self._topic_ids is None or not topics:
            return
        try:
            async with asyncio.timeout(STOP_KAFKA_S * 4):
                await self._topic_ids.refresh(topics)
        except (KafkaError, TopicIdError, TimeoutError) as err:
            log.warning("cannot look up topic IDs before committing (%s)", err)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            names = sorted(f"{tp.topic}/{tp.partition}" for tp in revoked)
            log.info("partitions revoked: %s", names)
            await self._ingest.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            log.info(
                "partitions assigned: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)
            )
