"""The durable hand-off: start one ``ExportRecord`` workflow for one Kafka record.

Failure contract — every hand-off ends in exactly one of these, and only the first two let the
partition's commit point pass the record:

1. **Started, or already there.** The workflow was started, or one with the same ID exists
   (``REJECT_DUPLICATE``): the record is handed off.
2. **Something about this record.** Temporal rejects the input (``INVALID_ARGUMENT``: too
   large, a bad search attribute, …), the input cannot be encoded, or anything unexpected
   happens building it: the record still gets a durable, visible outcome — a workflow with its
   coordinates only (no payload) that fails with the reason (``HandOffFailed``), shown in the
   UI, in ``courier status`` and ``courier replay``. The failure is logged with the record's
   coordinates and counted (``courier_hand_off_failures``).
3. **Temporal unreachable or busy** (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``,
   ``RESOURCE_EXHAUSTED``, ``ABORTED``, ``CANCELLED``, ``UNKNOWN``, ``INTERNAL``, connection
   errors): retried with backoff (WARNING at most once a minute per record); the partition
   waits, nothing is lost.
4. **Something about Courier itself** (``PERMISSION_DENIED``, ``UNAUTHENTICATED``,
   ``NOT_FOUND`` such as an unknown namespace, ``UNIMPLEMENTED``, ``FAILED_PRECONDITION``, or a
   record whose fallback workflow cannot be started either): logged as ERROR with what to do,
   at most once a minute, and retried; the partition waits.

The size guard measures what Temporal measures: the workflow input encoded by the client's
data converter, against ``temporal.max_input_bytes``.

:func:`deliver` applies this contract to any hand-off: a record's workflow (here), its signal to
its key's workflow (``ingest.ordered``), and a batch range's workflow (``ingest.ranges``), whose
failed workflow lists each of its records with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from aiokafka import ConsumerRecord
from temporalio.client import Client
from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from courier.config.model import CourierConfig
from courier.core import metrics, tracing
from courier.core import search_attributes as sa
from courier.core.ids import workflow_id
from courier.core.logs import Throttle
from ingest.routing import RouteDecision, key_text
from workflows.export_record import ExportRecord
from workflows.types import Blob, ExportRecordInput, Header, KafkaRecord

log = logging.getLogger("courier.ingest")

T = TypeVar("T")

_SEARCH_KEY_LIMIT = 256
_REASON_LIMIT = 2_000

TRANSIENT_STATUSES = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.UNKNOWN,
        RPCStatusCode.INTERNAL,
    }
)
"""Temporal answers that mean "try again later"."""

RECORD_STATUSES = frozenset({RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.OUT_OF_RANGE})
"""Temporal answers about this record's start request: it gets a failed workflow instead."""


@dataclass(frozen=True)
class HandOff:
    """Outcome of a hand-off: the workflow ID and what happened."""

    workflow_id: str
    started: bool
    failed_reason: str | None = None
    """Set when the record could not be handed off and got a failed workflow instead."""


class RecordRejected(Exception):
    """This record cannot travel as a workflow input; the message says why."""


def to_kafka_record(record: ConsumerRecord, topic_id: str) -> KafkaRecord:
    """The workflow-safe copy of a consumed record."""
    return KafkaRecord(
        topic=record.topic,
        topic_id=topic_id,
        partition=record.partition,
        offset=record.offset,
        key=None if record.key is None else Blob.of(record.key),
        value=None if record.value is None else Blob.of(record.value),
        timestamp_ms=record.timestamp,
        headers=[
            Header(name=name, value=None if value is None else Blob.of(value))
            for name, value in (record.headers or ())
        ],
    )


def build_input(
    record: ConsumerRecord,
    topic_id: str,
    decision: RouteDecision,
    config: CourierConfig,
    *,
    idempotency_key: str | None = None,
) -> ExportRecordInput:
    """The workflow input: the record plus its destination's name and policies, no secrets.

    ``idempotency_key``: the key the destination sees, if not the workflow ID (a re-drive).
    """
    kafka_record = to_kafka_record(record, topic_id)
    if decision.destination is None:
        return ExportRecordInput(
            record=kafka_record, destination=None, unroutable_reason=decision.reason
        )
    return ExportRecordInput(
        record=kafka_record,
        destination=config.destination(decision.destination).policy(),
        idempotency_key=idempotency_key,
    )


def reference_input(
    record: ConsumerRecord,
    topic_id: str,
    decision: RouteDecision,
    config: CourierConfig,
    *,
    idempotency_key: str | None = None,
) -> ExportRecordInput:
    """An input with the record's coordinates and key; the worker reads the rest from Kafka."""
    full = build_input(record, topic_id, decision, config, idempotency_key=idempotency_key)
    reference = replace(full.record, value=None, headers=[])
    return replace(full, record=reference, by_reference=True)


def failed_input(
    record: ConsumerRecord, topic_id: str, decision: RouteDecision, reason: str
) -> ExportRecordInput:
    """An input with the record's coordinates only, whose workflow fails with ``reason``."""
    coordinates = KafkaRecord(
        topic=record.topic,
        topic_id=topic_id,
        partition=record.partition,
        offset=record.offset,
        key=None,
        value=None,
        timestamp_ms=record.timestamp,
    )
    return ExportRecordInput(
        record=coordinates,
        destination=None,
        unroutable_reason=None if decision.destination else decision.reason,
        hand_off_failure=reason,
    )


async def encoded_size(client: Client, value: object) -> int:
    """Bytes of ``value`` as Temporal receives it, encoded by the client's data converter."""
    payloads = await client.data_converter.encode([value])
    return sum(p.ByteSize() for p in payloads)


async def checked_input(
    client: Client,
    config: CourierConfig,
    record: ConsumerRecord,
    topic_id: str,
    decision: RouteDecision,
    *,
    idempotency_key: str | None = None,
) -> ExportRecordInput:
    """The record's workflow input; :class:`RecordRejected` if it cannot be one."""
    limit = config.temporal.max_input_bytes
    key = idempotency_key
    try:
        workflow_input = build_input(record, topic_id, decision, config, idempotency_key=key)
        if config.ingest.payloads == "inline":
            size = await encoded_size(client, workflow_input)
            if size <= limit:
                return workflow_input
            log.info(
                "%s goes by reference: its inline workflow input would be %s bytes, over "
                "temporal.max_input_bytes",
                coordinates(record),
                f"{size:,}",
            )
        workflow_input = reference_input(record, topic_id, decision, config, idempotency_key=key)
        size = await encoded_size(client, workflow_input)
    except Exception as err:  # any conversion problem is about this record
        raise RecordRejected(f"cannot encode the record: {type(err).__name__}: {err}") from err
    if size > limit:
        raise RecordRejected(
            f"even without its value the record's workflow input is {size:,} bytes, over the "
            f"{limit:,}-byte limit (temporal.max_input_bytes): its key of "
            f"{len(record.key or b''):,} bytes is too large"
        )
    return workflow_input


def search_attributes(
    record: ConsumerRecord, decision: RouteDecision, *, with_key: bool = True
) -> TypedSearchAttributes:
    """Attributes operators filter on in the Temporal UI."""
    pairs: list[SearchAttributePair[str] | SearchAttributePair[int]] = [
        SearchAttributePair(sa.TOPIC, record.topic),
        SearchAttributePair(sa.PARTITION, record.partition),
        SearchAttributePair(sa.OFFSET, record.offset),
        SearchAttributePair(sa.DESTINATION, decision.destination or "(unroutable)"),
    ]
    key = key_text(record.key)
    if with_key and key is not None:
        pairs.append(SearchAttributePair(sa.RECORD_KEY, key[:_SEARCH_KEY_LIMIT]))
    return TypedSearchAttributes(pairs)


def coordinates(record: ConsumerRecord) -> str:
    """``topic/partition/offset`` of a record, for logs."""
    return f"{record.topic}/{record.partition}/{record.offset}"


@dataclass(frozen=True)
class Subject:
    """What one hand-off carries, for its log lines and metrics: a record or an offset range."""

    topic: str
    partition: int
    first: int
    last: int | None = None
    """The range's last offset; None for one record."""

    @classmethod
    def of(cls, record: ConsumerRecord) -> Subject:
        """The subject of a hand-off of ``record``."""
        return cls(record.topic, record.partition, record.offset)

    def __str__(self) -> str:
        if self.last is None:
            return f"{self.topic}/{self.partition}/{self.first}"
        return f"{self.topic}/{self.partition} [{self.first}..{self.last}]"


class ThrottledLog:
    """Logs a repeating condition at most once a minute, saying how often it recurred."""

    def __init__(self) -> None:
        self._throttle = Throttle()
        self._repeats = 0

    def log(self, level: int, message: str, *args: object) -> None:
        self._repeats += 1
        if self._throttle.due():
            suffix = f" ({self._repeats} times so far)" if self._repeats > 1 else ""
            log.log(level, message + suffix, *args)


async def hand_off(
    client: Client,
    config: CourierConfig,
    record: ConsumerRecord,
    topic_id: str,
    decision: RouteDecision,
    *,
    priority: Priority = Priority.default,
    max_backoff: float = 30.0,
    wid: str | None = None,
    idempotency_key: str | None = None,
) -> HandOff:
    """Start the record's workflow following the failure contract of this module.

    ``priority`` is its task-queue priority and fairness key (``ingest/priority.py``).

    Returns once the record is handed off (its workflow or its failed workflow exists); retries
    for as long as Temporal is unreachable or Courier is misconfigured. ``wid`` and
    ``idempotency_key`` replace the record's own workflow ID and key (a re-drive).
    """
    summary = f"{key_text(record.key)!r} → {decision.destination or 'no route'}"
    if wid is not None:
        summary = f"re-drive: {summary}"
    else:
        wid = workflow_id(
            group=config.kafka.group,
            topic=record.topic,
            topic_id=topic_id,
            partition=record.partition,
            offset=record.offset,
        )
    summary = summary[:200]
    requests: dict[str | None, tuple[ExportRecordInput, TypedSearchAttributes]] = {}

    async def start(failed_reason: str | None) -> bool:
        if failed_reason not in requests:  # built once; retries only resend it
            if failed_reason is None:
                workflow_input = await checked_input(
                    client, config, record, topic_id, decision, idempotency_key=idempotency_key
                )
                # Search attributes are never encrypted: with encryption the key stays out.
                attributes = search_attributes(
                    record, decision, with_key=config.temporal.encryption is None
                )
            else:
                workflow_input = failed_input(record, topic_id, decision, failed_reason)
                attributes = search_attributes(record, decision, with_key=False)
            requests[failed_reason] = workflow_input, attributes
        workflow_input, attributes = requests[failed_reason]
        try:
            await client.start_workflow(
                ExportRecord.run,
                workflow_input,
                id=wid,
                task_queue=config.temporal.workflow_task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=attributes,
                static_summary=summary if failed_reason is None else None,
                priority=priority,
            )
        except WorkflowAlreadyStartedError:
            return False
        return True

    attempt = Attempt(
        what=f"starting {wid}",
        verb="start",
        refused="the record's workflow",
        failure="its workflow fails",
        record_id=wid,
    )
    traced = tracing.active()
    if traced is None:
        started, failed_reason = await deliver(
            Subject.of(record), start, attempt, max_backoff=max_backoff
        )
        return HandOff(wid, started=started, failed_reason=failed_reason)
    # The record's trace: a child of its producer's span when it carries a traceparent; the
    # client's TracingInterceptor makes StartWorkflow (and all after it) children of this span.
    attributes = record_span_attributes(config, record, decision, wid)
    with tracing.record_span(traced, HAND_OFF_SPAN, record.headers, attributes) as span:
        started, failed_reason = await deliver(
            Subject.of(record), start, attempt, max_backoff=max_backoff
        )
        if failed_reason is not None:
            tracing.set_error(span, failed_reason)
        elif not started:
            span.set_attribute("courier.hand_off", "existing")
    return HandOff(wid, started=started, failed_reason=failed_reason)


HAND_OFF_SPAN = f"{tracing.HAND_OFF_SPAN}ExportRecord"
"""The span of a record's hand-off in per-record mode (with tracing enabled)."""


def record_span_attributes(
    config: CourierConfig, record: ConsumerRecord, decision: RouteDecision, wid: str
) -> dict[str, str | int]:
    """The hand-off span's attributes: OpenTelemetry's messaging conventions and the workflow."""
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.consumer.group.name": config.kafka.group,
        "courier.destination": decision.destination or "(unroutable)",
        "temporalWorkflowID": wid,
    }


@dataclass(frozen=True)
class Attempt:
    """How :func:`deliver` speaks of one kind of hand-off in its log lines."""

    what: str
    """e.g. ``starting courier/…``"""
    verb: str
    """``start`` or ``signal``: what Courier cannot do with workflows."""
    refused: str
    """What Temporal may refuse, e.g. ``the record's workflow``."""
    failure: str
    """What happens to a record that cannot be handed off, e.g. ``its workflow fails``."""
    record_id: str
    """The workflow the failed hand-off would start, for the log line when even that fails."""


async def deliver(
    subject: Subject,
    send: Callable[[str | None], Awaitable[T]],
    attempt: Attempt,
    *,
    max_backoff: float,
) -> tuple[T, str | None]:
    """Call ``send(failed_reason)`` until it returns, following this module's failure contract.

    ``send(None)`` hands the record (or range) off; after something about the subject itself
    failed, ``send(reason)`` hands off its coordinates only, with the reason it fails. Returns
    what ``send`` returned and the reason, if the subject is handed off as failed.
    """
    warning = ThrottledLog()
    delay = 0.5
    failed_reason: str | None = None
    while True:
        try:
            return await send(failed_reason), failed_reason
        except RecordRejected as err:
            failed_reason = _record_failure(subject, str(err), attempt.failure)
            continue
        except RPCError as err:
            if err.status in TRANSIENT_STATUSES:
                warning.log(
                    logging.WARNING,
                    "%s failed (%s: %s); retrying",
                    attempt.what,
                    err.status.name,
                    err.message,
                )
            elif err.status in RECORD_STATUSES and failed_reason is None:
                failed_reason = _record_failure(
                    subject,
                    f"Temporal refused {attempt.refused}: {err.message}",
                    attempt.failure,
                )
                continue
            else:
                warning.log(
                    logging.ERROR,
                    "cannot %s workflows (%s: %s) — check temporal.address, namespace, "
                    "credentials and that the Courier workers are deployed; %s waits",
                    attempt.verb,
                    err.status.name,
                    err.message,
                    subject,
                )
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if failed_reason is not None:  # even the coordinates-only hand-off failed: a bug
                warning.log(
                    logging.ERROR,
                    "cannot hand off %s even without its payload (%s: %s); %s waits",
                    attempt.record_id,
                    type(err).__name__,
                    err,
                    subject,
                )
            else:
                failed_reason = _record_failure(
                    subject, f"hand-off failed: {type(err).__name__}: {err}", attempt.failure
                )
                continue
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_backoff)


def _record_failure(subject: Subject, reason: str, failure: str) -> str:
    """Log and count a subject that is handed off as failed instead of for its export."""
    if len(reason) > _REASON_LIMIT:  # an error message may quote the very data that failed
        reason = reason[:_REASON_LIMIT] + "…"
    log.error("%s cannot be handed off, %s: %s", subject, failure, reason)
    metrics.HAND_OFF_FAILURES.labels(subject.topic).inc()
    return reason
