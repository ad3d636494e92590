"""Dead letters: a record that failed for good, in a Kafka topic with its failure's context.

Before a record's ``ExportRecord`` ends Failed — its export failed for good, it had no route, it
could not be handed off, or it failed in a batch-mode range — the ``dead_letter`` activity
writes it to its destination's dead-letter topic (config section ``dead_letter``): key, value,
headers and timestamp as they are in the source topic, then the context headers below. A
record by reference is read back from Kafka; if its bytes are gone (retention, a deleted topic)
or too large for the dead-letter topic, the entry holds the context only (and an empty value)
and ``courier.record_missing`` says why. (A record with neither key nor value is written with
an empty value: the client cannot send neither.)

The activity runs on the workflow worker's queue, never a destination's (it must not spend a
destination's rate or its probes), and is retried with backoff for as long as Kafka cannot
take the entry, each failed attempt logged: the record's workflow ends Failed only once its
dead letter is written. A record can be written more than once (an attempt whose
acknowledgement was lost, a replayed run failing again): consumers deduplicate on
``courier.idempotency_key``, the record's identity, keeping the entry with the latest
``courier.last_failure_time``. Each entry written counts in
``courier_records_dead_lettered_total{destination}`` (a repeat too).

Context headers (UTF-8 text, after the record's own, from ``__connect.errors.topic`` on; Kafka
Connect's names where they fit):

============================================  =================================================
``__connect.errors.topic``                    the record's topic
``__connect.errors.partition``                its partition
``__connect.errors.offset``                   its offset
``__connect.errors.exception.class.name``     the failure's type, e.g. ``PermanentExportError``
``__connect.errors.exception.message``        the reason
``courier.destination``                       the destination (absent: no route)
``courier.workflow_id``, ``courier.run_id``   the record's workflow and the run that failed
``courier.idempotency_key``                   the record's identity at the destinations
``courier.topic_id``                          Kafka's ID of the record's topic
``courier.attempts``                          export attempts made (0: none)
``courier.first_failure_time``                when the record's workflow first ended Failed
``courier.last_failure_time``                 when this failure happened (ISO 8601, UTC)
``courier.range_workflow_id``                 batch mode: the range it failed in
``courier.record_missing``                    why key, value and headers are not there
============================================  =================================================

:func:`parse_entry` reads an entry back (``courier failures`` and ``courier replay`` with
``--dead-letter``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.source import RecordSource
from courier.config.model import CourierConfig
from courier.core import metrics
from ingest.kafka import check_brokers, producer_options
from workflows.export_record import DEAD_LETTER_ACTIVITY, EXPORT_ACTIVITY
from workflows.types import DeadLetterInput, KafkaRecord

log = logging.getLogger("courier.dead_letter")

CONNECT_TOPIC = "__connect.errors.topic"
CONNECT_PARTITION = "__connect.errors.partition"
CONNECT_OFFSET = "__connect.errors.offset"
CONNECT_EXCEPTION_CLASS = "__connect.errors.exception.class.name"
CONNECT_EXCEPTION_MESSAGE = "__connect.errors.exception.message"
DESTINATION = "courier.destination"
WORKFLOW_ID = "courier.workflow_id"
RUN_ID = "courier.run_id"
IDEMPOTENCY_KEY = "courier.idempotency_key"
TOPIC_ID = "courier.topic_id"
ATTEMPTS = "courier.attempts"
FIRST_FAILURE = "courier.first_failure_time"
LAST_FAILURE = "courier.last_failure_time"
RANGE_ID = "courier.range_workflow_id"
RECORD_MISSING = "courier.record_missing"

CONTEXT_HEADERS = frozenset(
    {
        CONNECT_TOPIC,
        CONNECT_PARTITION,
        CONNECT_OFFSET,
        CONNECT_EXCEPTION_CLASS,
        CONNECT_EXCEPTION_MESSAGE,
        DESTINATION,
        WORKFLOW_ID,
        RUN_ID,
        IDEMPOTENCY_KEY,
        TOPIC_ID,
        ATTEMPTS,
        FIRST_FAILURE,
        LAST_FAILURE,
        RANGE_ID,
        RECORD_MISSING,
    }
)
"""The headers Courier adds after a record's own."""

DEAD_LETTER_ERROR_TYPE = "DeadLetterNotWritten"
NO_DESTINATION = "(none)"
"""The ``destination`` label of ``courier_records_dead_lettered_total`` for a record without a
route."""


def iso_time(value: datetime) -> str:
    """``2026-11-27T09:00:00.123Z``: a header's time."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class FailureContext:
    """What the record's workflow knows of the failure, besides its reason."""

    workflow_id: str
    run_id: str
    attempts: int
    first_failure: datetime
    last_failure: datetime


def context_headers(
    letter: DeadLetterInput, context: FailureContext, missing: str | None
) -> list[tuple[str, bytes | None]]:
    """The context headers of a dead-letter entry, in the module docstring's order."""
    record = letter.record
    values = [
        (CONNECT_TOPIC, record.topic),
        (CONNECT_PARTITION, str(record.partition)),
        (CONNECT_OFFSET, str(record.offset)),
        (CONNECT_EXCEPTION_CLASS, letter.error_type),
        (CONNECT_EXCEPTION_MESSAGE, letter.reason),
    ]
    if letter.destination is not None:
        values.append((DESTINATION, letter.destination))
    values += [
        (WORKFLOW_ID, context.workflow_id),
        (RUN_ID, context.run_id),
        (IDEMPOTENCY_KEY, letter.idempotency_key),
        (TOPIC_ID, record.topic_id or ""),
        (ATTEMPTS, str(context.attempts)),
        (FIRST_FAILURE, iso_time(context.first_failure)),
        (LAST_FAILURE, iso_time(context.last_failure)),
    ]
    if letter.range_id is not None:
        values.append((RANGE_ID, letter.range_id))
    if missing is not None:
        values.append((RECORD_MISSING, missing))
    return [(name, value.encode("utf-8")) for name, value in values]


def entry_headers(
    record: KafkaRecord | None, context: list[tuple[str, bytes | None]]
) -> list[tuple[str, bytes | None]]:
    """A dead-letter entry's headers: the record's own, exactly, then the context."""
    own = [] if record is None else record.headers
    return [(h.name, None if h.value is None else h.value.to_bytes()) for h in own] + context


@dataclass(frozen=True)
class DeadLetterEntry:
    """A dead-letter entry as read back: the record (unless missing) and its failure's context."""

    entry: str
    """Where the entry is: ``<dead-letter topic>/<partition>/<offset>``."""
    topic: str
    partition: int
    offset: int
    topic_id: str | None
    destination: str | None
    workflow_id: str | None
    idempotency_key: str
    error_type: str
    reason: str
    attempts: int
    first_failure: datetime | None
    last_failure: datetime | None
    range_id: str | None
    record_missing: str | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    """The record's own headers (the context ones taken off)."""
    timestamp_ms: int

    @property
    def coordinates(self) -> str:
        """``topic/partition/offset`` of the record that failed."""
        return f"{self.topic}/{self.partition}/{self.offset}"


def parse_entry(message: ConsumerRecord) -> DeadLetterEntry | None:
    """The entry a dead-letter topic's record holds; None for a record Courier did not write."""
    headers: list[tuple[str, bytes | None]] = list(message.headers or ())
    # The context begins with the last __connect.errors.topic: the record's own headers come
    # first (whatever their names, a dead letter's included).
    starts = [i for i, (name, _) in enumerate(headers) if name == CONNECT_TOPIC]
    if not starts:
        return None
    own = starts[-1]
    context = {
        name: value.decode("utf-8", errors="replace")
        for name, value in headers[own:]
        if value is not None
    }
    identity = context.get(IDEMPOTENCY_KEY)
    topic = context.get(CONNECT_TOPIC)
    try:
        partition = int(context.get(CONNECT_PARTITION, ""))
        offset = int(context.get(CONNECT_OFFSET, ""))
    except ValueError:
        return None
    if not identity or not topic:
        return None
    attempts = context.get(ATTEMPTS, "0")
    return DeadLetterEntry(
        entry=f"{message.topic}/{message.partition}/{message.offset}",
        topic=topic,
        partition=partition,
        offset=offset,
        topic_id=context.get(TOPIC_ID) or None,
        destination=context.get(DESTINATION) or None,
        workflow_id=context.get(WORKFLOW_ID),
        idempotency_key=identity,
        error_type=context.get(CONNECT_EXCEPTION_CLASS, ""),
        reason=context.get(CONNECT_EXCEPTION_MESSAGE, ""),
        attempts=int(attempts) if attempts.isdigit() else 0,
        first_failure=_parse_time(context.get(FIRST_FAILURE)),
        last_failure=_parse_time(context.get(LAST_FAILURE)),
        range_id=context.get(RANGE_ID),
        record_missing=context.get(RECORD_MISSING),
        key=message.key,
        value=message.value,
        headers=headers[:own],
        timestamp_ms=message.timestamp,
    )


async def failure_context(letter: DeadLetterInput) -> FailureContext:
    """The failure's context, from the running activity and its workflow's history."""
    info = activity.info()
    now = datetime.now(UTC)
    wid, run_id = info.workflow_id or "", info.workflow_run_id or ""
    try:
        client = activity.client()
    except RuntimeError:  # no client (a test's activity environment): what the input says
        return FailureContext(wid, run_id, letter.attempts or 0, now, now)
    attempts = letter.attempts
    if attempts is None:
        attempts = await _export_attempts(client, wid, run_id)
    first = await _first_failure(client, wid)
    return FailureContext(wid, run_id, attempts, min(first or now, now), now)


async def _export_attempts(client: Client, wid: str, run_id: str) -> int:
    """Attempts the run's export activity made (Temporal records its last attempt's number)."""
    types: dict[int, str] = {}
    attempts = 0
    handle = client.get_workflow_handle(wid, run_id=run_id)
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = event.activity_task_scheduled_event_attributes
            types[event.event_id] = scheduled.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            if types.get(started.scheduled_event_id) == EXPORT_ACTIVITY:
                attempts = started.attempt
    return attempts


async def _first_failure(client: Client, wid: str) -> datetime | None:
    """When an earlier run of the workflow ended Failed (a replay that failed again), if any."""
    if "'" in wid:  # not quotable in a visibility query; the time of this failure will do
        return None
    earliest: datetime | None = None
    query = f"WorkflowId = '{wid}' AND ExecutionStatus = 'Failed'"
    async for execution in client.list_workflows(query):
        closed = execution.close_time
        if closed is not None and (earliest is None or closed < earliest):
            earliest = closed
    return earliest


class DeadLetters:
    """The ``dead_letter`` activity of a workflow worker, with one producer for the dead-letter
    cluster (started on first use) and the process's reader of records by reference."""

    def __init__(self, config: CourierConfig, source: RecordSource) -> None:
        self.config = config
        self.source = source
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def close(self) -> None:
        """Flush and disconnect the producer, if it was started."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    @activity.defn(name=DEAD_LETTER_ACTIVITY)
    async def dead_letter(self, letter: DeadLetterInput) -> str:
        """Write a record that failed for good, and its failure's context, to its dead-letter
        topic; say where (or that the destination has none)."""
        topic = self.config.dead_letter.topic_for(letter.destination)
        ref = letter.record
        where = f"{ref.topic}/{ref.partition}/{ref.offset}"
        if topic is None:
            return "no dead-letter topic configured"
        try:
            record, missing = await self._record(letter)
            context = await failure_context(letter)
            try:
                written = await self._send(
                    topic,
                    None if missing else record,
                    context_headers(letter, context, missing),
                    record.timestamp_ms,
                )
            except (MessageSizeTooLargeError, RecordTooLargeError) as err:
                missing = f"too large for the dead-letter topic ({err})"
                written = await self._send(
                    topic, None, context_headers(letter, context, missing), record.timestamp_ms
                )
        except asyncio.CancelledError:
            raise
        except Exception as err:  # Kafka unreachable, mostly: retried until it is written
            log.warning(
                "%s: cannot write it to the dead-letter topic %s yet (attempt %d; its workflow "
                "fails once it is written): %s: %s",
                where,
                topic,
                activity.info().attempt,
                type(err).__name__,
                err,
                extra={"record": where, "destination": letter.destination},
            )
            raise ApplicationError(
                f"cannot write {where} to dead-letter topic {topic}: {type(err).__name__}: {err}",
                type=DEAD_LETTER_ERROR_TYPE,
            ) from None  # the message says it all; a chain could pass the failure size limit
        metrics.DEAD_LETTERED.labels(letter.destination or NO_DESTINATION).inc()
        log.info(
            "%s: written to dead-letter topic %s as %s%s",
            where,
            topic,
            written,
            f" (without the record: {missing})" if missing else "",
            extra={"record": where, "destination": letter.destination},
        )
        return f"written to {written}" + (f" without the record: {missing}" if missing else "")

    async def _record(self, letter: DeadLetterInput) -> tuple[KafkaRecord, str | None]:
        """The record to write, and why it cannot be if it cannot (gone from Kafka)."""
        ref = letter.record
        if not letter.by_reference:
            return ref, None
        if ref.topic_id is None:
            return ref, "its topic's ID was not recorded, so it cannot be read back safely"
        fetched = await self.source.fetch(
            topic=ref.topic, topic_id=ref.topic_id, partition=ref.partition, offsets=[ref.offset]
        )
        record = fetched.records.get(ref.offset)
        if record is None:
            return ref, fetched.missing
        return record, None

    async def _send(
        self,
        topic: str,
        record: KafkaRecord | None,
        context: list[tuple[str, bytes | None]],
        timestamp_ms: int,
    ) -> str:
        producer = await self._started()
        key = record.key.to_bytes() if record is not None and record.key is not None else None
        value = record.value.to_bytes() if record is not None and record.value is not None else None
        sent = await producer.send_and_wait(
            topic,
            key=key,
            # aiokafka sends no record with neither key nor value: an empty value stands in.
            value=b"" if key is None and value is None else value,
            headers=entry_headers(record, context),
            timestamp_ms=timestamp_ms if timestamp_ms >= 0 else None,
        )
        return f"{sent.topic}/{sent.partition}/{sent.offset}"

    async def _started(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                kafka = self.config.dead_letter.cluster(self.config.kafka)
                # One line saying what is wrong (refused, untrusted certificate, refused login).
                await check_brokers(kafka)
                producer = AIOKafkaProducer(
                    acks="all", enable_idempotence=True, **producer_options(kafka)
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer
