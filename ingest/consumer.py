"""The ingest loop: consume, route, hand off to Temporal, commit only what is safe.

Lifecycle, in order (as Kafka Connect's ``SinkTask``):

1. Subscribe with auto-commit off.
2. For each record: route its key, note the offset as in flight, start its workflow
   concurrently (at most ``kafka.max_in_flight`` at once; the loop waits when the window is full).
3. Every ``kafka.commit_interval``: commit each partition's safe point — the lowest offset still
   in flight, or one past the last record read (see ``ingest.offsets``).
4. On revoke: wait for the revoked partitions' hand-offs (bounded), commit them, forget them;
   anything not finished stays uncommitted and is read again by the next owner.
5. On stop (SIGTERM): stop reading, wait for hand-offs in flight, commit, leave the group.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context
from temporalio.client import Client

from courier import metrics
from courier.config import CourierConfig, KafkaConfig
from ingest.handoff import hand_off
from ingest.offsets import OffsetTracker
from ingest.routing import Router

log = logging.getLogger("courier.ingest")

DRAIN_TIMEOUT_S = 30.0
MAX_BACKOFF_S = 30.0


def consumer_options(kafka: KafkaConfig) -> dict[str, object]:
    """aiokafka options for the configured brokers and security."""
    sec = kafka.security
    options: dict[str, object] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": sec.protocol,
    }
    if sec.protocol in ("SSL", "SASL_SSL"):
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None,
            certfile=str(sec.ssl_certfile) if sec.ssl_certfile else None,
            keyfile=str(sec.ssl_keyfile) if sec.ssl_keyfile else None,
        )
        options["ssl_context"] = context
    if sec.protocol.startswith("SASL"):
        options["sasl_mechanism"] = sec.sasl_mechanism
        options["sasl_plain_username"] = sec.sasl_username
        options["sasl_plain_password"] = (
            sec.sasl_password.get_secret_value() if sec.sasl_password else None
        )
    return options


class Ingest:
    """Consumes the configured topics and starts one workflow per record."""

    def __init__(self, config: CourierConfig, client: Client) -> None:
        self.config = config
        self.client = client
        self.router = Router(config.routes)
        self.tracker = OffsetTracker()
        self.counts: collections.Counter[str] = collections.Counter()
        """Records by outcome: ``started``, ``existing``, ``skipped``, and per destination."""
        self._window = asyncio.Semaphore(config.kafka.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()

    def assignment(self) -> set[TopicPartition]:
        """The partitions this ingest owns right now."""
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def stop(self) -> None:
        """Ask the loop to finish: it commits what is safe and leaves the group."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`stop` is called (or the task is cancelled)."""
        kafka = self.config.kafka
        consumer = await self._start_consumer()
        if consumer is None:
            return
        self._consumer = consumer
        committer = asyncio.create_task(self._commit_periodically())
        log.info(
            "ingest started: group %s, topics %s", kafka.group, kafka.topics or kafka.topic_pattern
        )
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=kafka.max_in_flight)
                for tp, records in batches.items():
                    for record in records:
                        await self._dispatch(tp, record)
        finally:
            committer.cancel()
            await self._drain(self._tasks, DRAIN_TIMEOUT_S)
            await self.commit()
            await consumer.stop()
            log.info(
                "ingest stopped: %d started, %d already started, %d skipped",
                self.counts["started"],
                self.counts["existing"],
                self.counts["skipped"],
            )

    def _new_consumer(self) -> AIOKafkaConsumer:
        kafka = self.config.kafka
        consumer = AIOKafkaConsumer(
            group_id=kafka.group,
            enable_auto_commit=False,
            auto_offset_reset=kafka.auto_offset_reset,
            client_id=f"courier-ingest-{kafka.group}",
            **consumer_options(kafka),
        )
        listener = _Rebalance(self)
        if kafka.topic_pattern:
            consumer.subscribe(pattern=kafka.topic_pattern, listener=listener)
        else:
            consumer.subscribe(topics=kafka.topics, listener=listener)
        return consumer

    async def _start_consumer(self) -> AIOKafkaConsumer | None:
        """A started consumer; retries while Kafka is unreachable (None once stopped)."""
        delay = 1.0
        while not self._stopping.is_set():
            consumer = self._new_consumer()
            try:
                await consumer.start()
                return consumer
            except KafkaConnectionError as err:
                await consumer.stop()
                log.warning(
                    "Kafka at %s is not reachable (%s); retrying in %.0fs",
                    self.config.kafka.bootstrap_servers,
                    err,
                    delay,
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
        return None

    async def _dispatch(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        await self._window.acquire()
        if tp not in self._consumer.assignment():  # type: ignore[union-attr]
            self._window.release()  # revoked while we waited: the new owner reads it again
            return
        self.tracker.begin(tp, record.offset)
        task = asyncio.create_task(self._hand_off(tp, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hand_off(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        try:
            decision = self.router.route(record.key)
            if decision.action == "skip":
                log.info(
                    "skipping %s/%d/%d: %s", tp.topic, tp.partition, record.offset, decision.reason
                )
                outcome = "skipped"
            else:
                result = await hand_off(self.client, self.config, record, decision)
                outcome = "started" if result.started else "existing"
                self.counts[f"to:{decision.destination or '(unroutable)'}"] += 1
            self.counts[outcome] += 1
            metrics.INGESTED.labels(tp.topic, outcome).inc()
            self.tracker.finish(tp, record.offset)
        finally:
            self._window.release()

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit the safe point of every owned partition (or only of ``partitions``)."""
        if self._consumer is None:
            return
        owned = self._consumer.assignment() if partitions is None else partitions
        offsets = {tp: off for tp, off in self.tracker.committable().items() if tp in owned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
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
            await self.commit()

    async def _drain(self, tasks: set[asyncio.Task[None]], timeout: float) -> None:
        pending = set(tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                log.warning(
                    "%d hand-offs unfinished after %.0fs; left uncommitted", len(still), timeout
                )

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish (bounded) the revoked partitions' hand-offs, commit them, forget them."""
        deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_S
        while self.tracker.in_flight(revoked) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await self.commit(revoked)
        self.tracker.forget(revoked)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            log.info(
                "partitions revoked: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in revoked)
            )
            await self._ingest.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            log.info(
                "partitions assigned: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)
            )
