"""The ingest loop: consume, hand off to Temporal through a strategy, commit only what is safe.

The loop owns Kafka — assignment, fetching, buffering and pausing, topic IDs and incarnations,
commits, rebalances — and one hand-off strategy (``ingest.strategy``) chosen once from the
config: per record (``ingest.per_record``), per record with key chains for ordered destinations
(``ingest.ordered``), or per offset range (``ingest.ranges``). The strategy takes buffered
records and starts hand-offs in the window the loop lends it (``HandOffs``); the loop commits
the offset tracker's safe points, which only finished hand-offs move.

The references are Kafka Connect's ``SinkTask`` (``open``/``put``/``close`` per partition) and
Arroyo's processing strategy (``submit``/``join``, rebuilt per assignment): ``dispatch`` is
``put``, ``on_restart``/``on_revoke`` are ``close``, the loop's drain is ``join``. Unlike
Arroyo's, the strategy lives as long as the loop and forgets per partition instead: hand-offs of
a revoked partition may still finish after it is assigned again, and key chains span them.

Lifecycle, in order:

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
4. After every poll, the strategy takes buffered records whose partition's position is checked
   and hands them off concurrently (at most ``kafka.max_in_flight`` at once: records, key
   turns or ranges), each starting its workflow (``ingest.handoff``, whose failure contract
   says what happens when that fails; ranges follow it too). A partition whose topic ID
   changed, or whose position was reset, is restarted: the strategy drops what it holds of it.
5. Every ``kafka.commit_interval``: commit each partition's safe point — the lowest offset
   still in flight, or one past the last record begun (see ``ingest.offsets``).
6. On revoke: drop the revoked partitions' buffered records (and the strategy what it holds of
   them, never begun), wait (bounded) for their hand-offs in flight, commit them unless their
   topic was deleted or recreated meanwhile, forget them; the next owner reads the rest again.
7. On stop (SIGTERM): stop reading, wait (briefly) for hand-offs in flight, commit, leave the
   group, all within about 2 s; a stop while still connecting to Kafka ends the attempt.

Beside the loop, every ``kafka.commit_interval`` a task commits (step 5), and every
``ingest.lag.LAG_INTERVAL_S`` one measures the owned partitions' consumer lag (``ingest.lag``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaConnectionError, KafkaError
from temporalio.client import Client

from activities.formats import RegistryUnavailableError
from courier.config.model import CourierConfig
from courier.core import metrics
from courier.core.logs import Throttle
from courier.core.stopping import unless_stopped
from ingest.incarnations import commit_metadata, fetch_committed
from ingest.kafka import KafkaUnreachable, check_brokers, consumer_options, never_create_topics
from ingest.lag import LAG_INTERVAL_S, Lag, LagMeter
from ingest.offsets import OffsetTracker
from ingest.ordered import Ordered
from ingest.per_record import PerRecord
from ingest.priority import DestinationLoad
from ingest.ranges import Ranges
from ingest.strategy import Buffers, HandOffs, Strategy
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
POSITION_TIMEOUT_S = 0.2
"""The longest a commit waits for a partition's position (known at once, unless resetting)."""
MISSING_TOPIC_LOG_S = 30.0
END_OFFSETS_TIMEOUT_S = 2.0
"""The longest one lag measurement waits for the partitions' log end offsets."""
FETCH_MAX_WAIT_MS = 100
"""How long the broker may hold a fetch for partitions at their log end. One fetch is in flight
per broker, and a partition that was paused, or whose records were not yet taken, when it was
sent waits for it to return before its own next fetch: with Kafka's 500 ms, a partition behind
others at their end got one fetch's records per half second."""


def strategy_for(config: CourierConfig, hand_offs: HandOffs, load: DestinationLoad) -> Strategy:
    """The hand-off strategy of the configured mode."""
    if config.ingest.mode == "batch":
        return Ranges(hand_offs)
    if any(destination.ordering == "key" for destination in config.destinations):
        return Ordered(hand_offs, load)
    return PerRecord(hand_offs, load)


class Ingest:
    """Consumes the configured topics and hands their records off through its strategy."""

    def __init__(self, config: CourierConfig, client: Client) -> None:
        self.config = config
        self.client = client
        self.load = DestinationLoad(client, config)
        self.tracker = OffsetTracker()
        self.counts: collections.Counter[str] = collections.Counter()
        """Records by outcome (``started``, ``existing``, ``failed``, ``skipped``) and route."""
        self.hand_offs = HandOffs(config, client, self.tracker, self.counts, self._handing_off_as)
        self.strategy = strategy_for(config, self.hand_offs, self.load)
        self._buffers: Buffers = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._topic_ids: TopicIds | None = None
        self._stopping = asyncio.Event()
        self._missing_logged: dict[str, float] = {}
        self._topics_checked = -MISSING_TOPIC_LOG_S
        self._ids_checked = 0.0
        self._registry_log = Throttle(MISSING_TOPIC_LOG_S)
        self._schemas_missing = False
        """Whether buffered records may name schemas not fetched yet (the registry failed)."""
        self._ids_failure_logged = -MISSING_TOPIC_LOG_S
        self._moved = True
        """Whether the last dispatch started or gathered anything (else waiting records are
        blocked on hand-offs in flight or a missing topic, and the loop must not spin)."""
        self._seen_ids: dict[str, str] = {}
        """The last ID each topic was seen with (a topic that disappears keeps its entry)."""
        self._checked: dict[TopicPartition, str] = {}
        """The topic ID each partition's read position was checked against: its records are
        handed off, and its offsets committed, only under that ID."""
        self._reposition: set[TopicPartition] = set()
        """Partitions restarted after their topic's ID changed, to be positioned anew."""
        self.lag = LagMeter()
        self._lag_errors = Throttle()

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
        measuring = asyncio.create_task(self._measure_lag_periodically())
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
            measuring.cancel()
            if watching is not None:
                watching.cancel()
            await self.hand_offs.drain(STOP_DRAIN_S)
            # Bounded: with Kafka gone, aiokafka would wait out its 40 s request timeout.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_KAFKA_S):
                    await self.commit()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_KAFKA_S):
                    await consumer.stop()
            self.lag.forget_all()
            if self.hand_offs.decoder is not None:
                await self.hand_offs.decoder.close()
            log.info(
                "ingest stopped: %d started, %d already started, %d failed, %d skipped",
                self.counts["started"],
                self.counts["existing"],
                self.counts["failed"],
                self.counts["skipped"],
            )

    async def _poll_once(self, consumer: AIOKafkaConsumer) -> None:
        await self._warn_missing_topics()
        waiting = any(self._buffers.values())
        due_ms = self.strategy.due_in_ms()
        if self.hand_offs.full() or (waiting and not self._moved):
            # Records wait for a hand-off to finish: wait for one (briefly), but keep polling
            # so the group keeps us.
            self.hand_offs.slot_freed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.hand_offs.slot_freed.wait(), POLL_TIMEOUT_MS / 1000)
            timeout_ms = 0
        elif waiting:
            timeout_ms = 0
        elif due_ms is not None:
            timeout_ms = min(POLL_TIMEOUT_MS, due_ms)
        else:
            timeout_ms = POLL_TIMEOUT_MS
        # Everything fetched, at once: records left in aiokafka's buffer keep their partition
        # out of the next fetch request (see FETCH_MAX_WAIT_MS).
        batches = await consumer.getmany(timeout_ms=timeout_ms)
        owned = consumer.assignment()
        fetched = False
        for tp, records in batches.items():
            if tp in owned and records:
                self._buffers.setdefault(tp, collections.deque()).extend(records)
                self.lag.read(
                    tp,
                    records,
                    epoch=self.hand_offs.epoch(tp),
                    handed_off=self.tracker.commit_point(tp),
                )
                fetched = True
        now = time.monotonic()
        if fetched or (any(self._buffers.values()) and now - self._ids_checked >= 1.0):
            self._ids_checked = now
            await self._check_topic_ids(consumer)
        if await self._schemas_ready(self._buffers if self._schemas_missing else batches):
            self._dispatch()
        self._pause_buffered(consumer)

    async def _schemas_ready(
        self, records: Mapping[TopicPartition, Iterable[ConsumerRecord]]
    ) -> bool:
        """Whether routing has the schemas it needs to decode the buffered records (``when``
        rules on topics with registry formats), given ``records``: those just fetched, or all
        buffered while an earlier fetch's are missing; while the registry cannot answer, the
        records wait in their buffers (one warning every 30 s)."""
        try:
            await self.hand_offs.prefetch_schemas(records)
        except RegistryUnavailableError as err:
            if self._registry_log.due():
                log.warning("records wait for the schema registry: %s", err)
            self._schemas_missing = True
            self._moved = False
            return False
        self._schemas_missing = False
        return True

    def _dispatch(self) -> None:
        """Let the strategy take buffered records; note whether anything moved."""
        before = self.hand_offs.in_flight, sum(len(r) for r in self._buffers.values())
        self.strategy.dispatch(self._buffers)
        after = self.hand_offs.in_flight, sum(len(r) for r in self._buffers.values())
        self._moved = before != after

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
        buffered = {tp for tp, records in self._buffers.items() if records and tp in owned}
        paused = consumer.paused()
        if buffered - paused:
            consumer.pause(*(buffered - paused))
        if (paused & owned) - buffered:
            consumer.resume(*((paused & owned) - buffered))

    async def _check_topic_ids(self, consumer: AIOKafkaConsumer) -> None:
        """Refresh the IDs of the buffered topics; restart partitions of recreated topics."""
        assert self._topic_ids is not None
        topics = {tp.topic for tp, records in self._buffers.items() if records}
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
        self._buffers.pop(tp, None)
        self.strategy.on_restart(tp)
        self._checked.pop(tp, None)
        self.hand_offs.restart(tp)

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

    def _new_consumer(self) -> AIOKafkaConsumer:
        kafka = self.config.kafka
        consumer = AIOKafkaConsumer(
            group_id=kafka.group,
            enable_auto_commit=False,
            auto_offset_reset=kafka.auto_offset_reset,
            client_id=f"courier-ingest-{kafka.group}",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
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
        await self._pass_control_records(owned)
        offsets = {
            tp: off
            for tp, off in self.tracker.committable().items()
            if tp in owned and self._checked.get(tp) == self._topic_ids.get(tp.topic)
        }
        if not offsets:
            if partitions is None:  # everything handed off is committed already
                metrics.LAST_COMMIT.set(time.time())
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
        metrics.LAST_COMMIT.set(time.time())
        log.debug("committed %s", {f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()})

    async def _pass_control_records(self, partitions: set[TopicPartition]) -> None:
        """Let the commit point of an idle partition pass the control records after its last
        record (a transaction's commit or abort marker, aborted records skipped under
        read_committed): they are never handed off, and without this the committed offset
        stayed below the log end, and the lag above 0, for good."""
        assert self._consumer is not None and self._topic_ids is not None
        for tp in partitions:
            point = self.tracker.commit_point(tp)
            if (
                point is None
                or self.tracker.in_flight({tp})
                or self._buffers.get(tp)
                or self.strategy.holds(tp)
                or self._checked.get(tp) != self._topic_ids.get(tp.topic)
            ):
                continue
            try:
                async with asyncio.timeout(POSITION_TIMEOUT_S):
                    position = await self._consumer.position(tp)
            except (TimeoutError, KafkaError, IllegalStateError):
                continue
            if position > point:
                self.tracker.advance(tp, position)

    async def _commit_periodically(self) -> None:
        interval = self.config.kafka.commit_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.commit()
            except Exception:  # never let the committer die silently
                log.exception("periodic commit failed; retrying at the next interval")

    async def measure_lag(self) -> dict[TopicPartition, Lag]:
        """Measure the owned partitions' consumer lag and publish it (``ingest.lag``)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        owned = set(consumer.assignment())
        ends = await self._log_ends(consumer, owned)
        now = time.time()
        lags = {}
        for tp in owned & ends.keys():
            point = await self._handed_off_point(consumer, tp)
            if point is not None:
                lags[tp] = self.lag.measure(
                    tp, end=ends[tp], handed_off=point, epoch=self.hand_offs.epoch(tp), now=now
                )
        self.lag.show(lags, owned)
        return lags

    async def _log_ends(
        self, consumer: AIOKafkaConsumer, owned: set[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The partitions' log end offsets under the consumer's isolation level (the last
        stable offset under read_committed); failing that, those of the last fetch."""
        if not owned:
            return {}
        try:
            async with asyncio.timeout(END_OFFSETS_TIMEOUT_S):
                ends: dict[TopicPartition, int] = await consumer.end_offsets(list(owned))
                return ends
        except (KafkaError, TimeoutError) as err:
            metrics.COLLECT_ERRORS.labels("kafka").inc()
            if self._lag_errors.due():
                log.warning(
                    "cannot read the log end offsets for the consumer lag (%s); using those of "
                    "the last fetch",
                    err or type(err).__name__,
                )
        read_committed = self.config.kafka.isolation_level == "read_committed"
        fetched = {}
        for tp in owned:
            with contextlib.suppress(IllegalStateError, AssertionError):
                end = consumer.last_stable_offset(tp) if read_committed else consumer.highwater(tp)
                if end is not None and end >= 0:
                    fetched[tp] = end
        return fetched

    async def _handed_off_point(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
        """The lowest offset of ``tp`` not handed off yet (see ``ingest.lag``); None: unknown."""
        point = self.tracker.commit_point(tp)
        if point is not None:
            return point
        first = self.lag.first_waiting(tp, self.hand_offs.epoch(tp))
        if first is not None:
            return first
        try:
            async with asyncio.timeout(POSITION_TIMEOUT_S):
                position: int = await consumer.position(tp)
                return position
        except (TimeoutError, KafkaError, IllegalStateError):
            return None

    async def _measure_lag_periodically(self) -> None:
        while True:
            try:
                await self.measure_lag()
            except Exception:  # never let the measurements stop silently
                log.exception("measuring the consumer lag failed; retrying at the next interval")
            await asyncio.sleep(LAG_INTERVAL_S)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Drop buffered records of ``revoked``, finish (bounded) their hand-offs, commit."""
        for tp in revoked:
            self._buffers.pop(tp, None)
        self.strategy.on_revoke(revoked)
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
            self.hand_offs.restart(tp)
            self._checked.pop(tp, None)
            self._reposition.discard(tp)
        self.lag.forget(revoked)

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
