"""The durable hand-off: start one ``ExportRecord`` workflow for one Kafka record."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import ConsumerRecord
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from courier import search_attributes as sa
from courier.config import CourierConfig
from courier.ids import workflow_id
from ingest.routing import RouteDecision, key_text
from workflows.export_record import ExportRecord
from workflows.types import Blob, ExportRecordInput, Header, KafkaRecord

log = logging.getLogger("courier.ingest")

# Temporal rejects payloads over 2 MiB; keep a margin for the envelope.
MAX_RECORD_BYTES = 1_800_000
_SEARCH_KEY_LIMIT = 256


@dataclass(frozen=True)
class HandOff:
    """Outcome of a hand-off: the workflow ID and whether this call started it."""

    workflow_id: str
    started: bool


def to_kafka_record(record: ConsumerRecord) -> KafkaRecord:
    """The workflow-safe copy of a consumed record."""
    return KafkaRecord(
        topic=record.topic,
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
    record: ConsumerRecord, decision: RouteDecision, config: CourierConfig
) -> ExportRecordInput:
    """The workflow input: the record plus its destination's name and policies, no secrets."""
    size = len(record.key or b"") + len(record.value or b"")
    if size > MAX_RECORD_BYTES:
        # Too large for Temporal history: hand off the coordinates only, and fail readably.
        stripped = KafkaRecord(
            record.topic, record.partition, record.offset, None, None, record.timestamp
        )
        return ExportRecordInput(
            record=stripped,
            destination=None,
            unroutable_reason=f"record of {size:,} bytes exceeds the {MAX_RECORD_BYTES:,}-byte "
            "limit of a workflow input",
        )
    if decision.destination is None:
        return ExportRecordInput(
            record=to_kafka_record(record), destination=None, unroutable_reason=decision.reason
        )
    return ExportRecordInput(
        record=to_kafka_record(record),
        destination=config.destination(decision.destination).policy(),
    )


def search_attributes(record: ConsumerRecord, decision: RouteDecision) -> TypedSearchAttributes:
    """Attributes operators filter on in the Temporal UI."""
    pairs = [
        SearchAttributePair(sa.TOPIC, record.topic),
        SearchAttributePair(sa.PARTITION, record.partition),
        SearchAttributePair(sa.OFFSET, record.offset),
        SearchAttributePair(sa.DESTINATION, decision.destination or "(unroutable)"),
    ]
    key = key_text(record.key)
    if key is not None:
        pairs.append(SearchAttributePair(sa.RECORD_KEY, key[:_SEARCH_KEY_LIMIT]))
    return TypedSearchAttributes(pairs)


async def hand_off(
    client: Client,
    config: CourierConfig,
    record: ConsumerRecord,
    decision: RouteDecision,
    *,
    max_backoff: float = 30.0,
) -> HandOff:
    """Start the record's workflow, retrying while Temporal is unreachable.

    An existing workflow with the same ID counts as handed off (``REJECT_DUPLICATE``).
    """
    wid = workflow_id(
        group=config.kafka.group,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
    )
    workflow_input = build_input(record, decision, config)
    summary = f"{key_text(record.key)!r} → {decision.destination or 'no route'}"
    delay = 0.5
    while True:
        try:
            await client.start_workflow(
                ExportRecord.run,
                workflow_input,
                id=wid,
                task_queue=config.temporal.workflow_task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=search_attributes(record, decision),
                static_summary=summary[:200],
            )
            return HandOff(wid, started=True)
        except WorkflowAlreadyStartedError:
            return HandOff(wid, started=False)
        except RPCError as err:
            log.warning("starting %s failed (%s); retrying in %.1fs", wid, err.message, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_backoff)
