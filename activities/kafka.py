"""Kafka destination: each record produced to a topic, on the same cluster or another one.

What is produced: the record's key, value, headers and timestamp as they are in the source
topic, or shaped by the config (``key`` and ``headers`` templates, a ``value`` that is the
record envelope, a JSONata mapping's result as JSON, or a text template; ``activities.mapping``),
partitioned by key as Kafka's own producers do (murmur2; a null key: any partition). After the
record's own headers come Courier's, which replace any of the same name the record carried:

==============================  ======================================================
``courier.idempotency_key``     the record's identity (its ``ExportRecord`` workflow ID)
``courier.topic``               the source topic
``courier.topic_id``            Kafka's ID of the source topic (when known)
``courier.partition``           the source partition
``courier.offset``              the source offset
==============================  ======================================================

What a downstream consumer sees (the guarantee)
-----------------------------------------------
Every record is in the destination topic **at least once**; a record that is there more than
once is there as identical copies (same key, value, headers and timestamp, so the same
``courier.idempotency_key``): a consumer that keeps the first record of each
``courier.idempotency_key`` sees each source record exactly once. Precisely:

- A record counts as exported only once every in-sync replica has it (``acks=all``): the
  activity completes, and the source offset is committed, only after that.
- The producer is idempotent (``enable_idempotence``): within one producer session the brokers
  drop the duplicates of the producer's own retries (lost acknowledgements, reconnects).
- A worker killed mid-batch (or an attempt that failed or timed out after some of its records
  went out) leaves the records it produced in the topic; Temporal retries the activity, in a new
  producer session, which produces the records without a confirmed effect again: each may then be
  there twice (or more, once per such attempt), never zero times. An attempt that fails with some
  records acknowledged reports them confirmed, so its retry sends only the others; a kill
  confirms nothing, so the retry sends the whole batch again.
- No transactions are used, so ``read_committed`` and ``read_uncommitted`` consumers see the same
  records. (Transactions per batch would not remove the duplicates: a batch committed by a worker
  killed before Temporal recorded its completion is committed again by the retry; and a killed
  worker's open transaction would hold every ``read_committed`` consumer of its partitions until
  the transaction timed out.)
- Order: records of one key go to one partition (the partition count unchanged). With
  ``ordering: key`` a key's records are produced one after the other in source offset order; a
  duplicate then follows its original before the key's next record.

The topic must exist: Courier never creates a destination topic, even on a broker with
``auto.create.topics.enable`` (the producer only ever asks the brokers for the metadata of all
topics, which creates none). ``open()`` checks it and a missing topic is a retryable error with
a readable reason (the worker reports "not connected" and retries; records wait in Temporal); so
is a topic deleted while Courier runs.

Errors: a record larger than ``max_request_size`` or than the topic accepts (its
``max.message.bytes``, read at ``open()``; the producer's batches are kept within it too) fails
alone, for good, without being sent; so does one with a timestamp the topic refuses. Everything
else (brokers unreachable, not enough replicas, no acknowledgement within ``delivery_timeout``,
authorization, a request refused as too large because the topic's limit was lowered since) is
retried; after a refused request the producer is replaced, and the new one reads the limit
again. While records of an attempt that gave up still wait in the producer for a broker, a new
attempt sends nothing and is retried: a cluster that is down does not pile up copies of the
backlog in the worker's memory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from activities.base import DestinationConfig, Pace, batch_size_field, no_pace
from activities.encoding import record_envelope
from activities.errors import ExportError, PermanentExportError, RetryableExportError
from activities.mapping import Expression, MappingError, Template, check_mappings, record_data
from courier.core.durations import Duration, format_duration
from courier.core.kafka_security import KafkaSecurity
from workflows.types import OutgoingRecord

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "courier.idempotency_key"
"""The header holding the record's identity: consumers deduplicate on it."""
SOURCE_HEADERS = ("courier.topic", "courier.topic_id", "courier.partition", "courier.offset")
"""The headers holding the source record's coordinates."""
COURIER_HEADERS = frozenset({IDEMPOTENCY_HEADER, *SOURCE_HEADERS})
CLOSE_TIMEOUT_S = 5.0
"""Longest ``close()`` waits for records still in the producer to be acknowledged."""
DEFAULT_BATCH_BYTES = 16_384
"""The producer's batch size (Kafka's default), or the topic's limit when that is smaller."""

Headers = list[tuple[str, bytes | None]]


class ValueMapping(BaseModel):
    """A value built from the record: give exactly one of ``mapping`` or ``template``."""

    model_config = ConfigDict(extra="forbid")

    mapping: str | None = Field(
        default=None,
        description="JSONata expression over the record (see the README); its result is "
        "produced as JSON (UTF-8).",
    )
    template: str | None = Field(
        default=None,
        description="Text with {expression} pieces, produced as UTF-8; write literal braces as "
        "{{ and }}.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> ValueMapping:
        if (self.mapping is None) == (self.template is None):
            raise ValueError("give exactly one of `mapping` or `template`")
        return self


def _value_form(value: Any) -> str:
    return "named" if isinstance(value, str) else "mapped"


Value = Annotated[
    Annotated[Literal["raw", "json"], Tag("named")] | Annotated[ValueMapping, Tag("mapped")],
    Discriminator(_value_form),
]


class KafkaDestinationConfig(DestinationConfig):
    """A Kafka topic (on the same cluster as the source or another) that receives each record."""

    # A whole default range (ingest.max_records) in one activity: producing a record costs far
    # less than what an activity costs Temporal.
    batch_size: int = batch_size_field(5_000)

    def create(self) -> KafkaDestination:
        """The destination this config describes (not yet opened)."""
        return KafkaDestination(self)

    @classmethod
    def describe_preview(cls, shown: Mapping[str, Any]) -> list[str]:
        """The record of a preview: where it goes, its key, headers and value."""
        lines = [f"# produced to {shown['topic']} at {shown['bootstrap_servers']}"]
        lines.append(f"key: {json.dumps(shown['key'], ensure_ascii=False)}")
        lines += [
            f"header {name}: {json.dumps(value, ensure_ascii=False)}"
            for name, value in shown["headers"]
        ]
        lines.append(f"timestamp_ms: {shown['timestamp_ms']}")
        value = shown["value"]
        lines.append("value: " + (value if isinstance(value, str) else json.dumps(value)))
        return lines

    kind: Literal["kafka"] = Field(description="Always `kafka`.")
    bootstrap_servers: str = Field(
        description="Comma-separated host:port list of the destination cluster's brokers (the "
        "source cluster's, or another's)."
    )
    topic: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="Topic to produce to; it must exist (Courier never creates it).",
    )
    security: KafkaSecurity = Field(
        default_factory=KafkaSecurity,
        description="TLS and SASL settings of the destination cluster, as in section "
        "kafka.security (section destinations[].security).",
    )
    value: Value = Field(
        default="raw",
        description="`raw` produces the record's value bytes as they are (a null value stays "
        "null); `json` produces Courier's record envelope (see the README); `{mapping: EXPR}` "
        "the result of a JSONata expression as JSON; `{template: TEXT}` text with "
        "{expression} pieces.",
    )
    key: str | None = Field(
        default=None,
        description="Key of the produced record, a template (text with {expression} pieces, "
        "e.g. '{value.customer.id}'); unset keeps the record's key bytes as they are (a null "
        "key stays null). The key chooses the partition.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Headers added after the record's own, values are templates like `key`, "
        "e.g. X-Trace: '{headers.trace}'. The courier.* headers (idempotency key, source "
        "coordinates) are always set by Courier.",
    )
    timestamp: Literal["source", "now"] = Field(
        default="source",
        description="`source` keeps the record's timestamp (a copy made by a retry is then "
        "identical to the first); `now` lets the producer stamp the time it sends.",
    )
    max_request_size: int = Field(
        default=1_048_576,
        ge=1_024,
        description="Largest record (key, value and headers as produced) the producer sends; "
        "a larger one fails alone, as does one larger than the topic's max.message.bytes.",
    )
    delivery_timeout: Duration = Field(
        default=timedelta(seconds=20),
        description="Longest an export waits for the brokers to acknowledge its records; keep "
        "it below timeouts.attempt so a cluster that does not answer fails with this readable "
        "reason rather than an activity timeout.",
    )

    @model_validator(mode="after")
    def _check(self) -> KafkaDestinationConfig:
        ours = sorted(name for name in self.headers if name in COURIER_HEADERS)
        if ours:
            raise ValueError(f"headers: {', '.join(ours)} are set by Courier; leave them out")
        fields = {f"headers.{n}": ("template", v) for n, v in self.headers.items()}
        if self.key is not None:
            fields["key"] = ("template", self.key)
        if isinstance(self.value, ValueMapping) and self.value.mapping is not None:
            fields["value.mapping"] = ("expression", self.value.mapping)
        if isinstance(self.value, ValueMapping) and self.value.template is not None:
            fields["value.template"] = ("template", self.value.template)
        check_mappings(self.name, fields)
        if self.delivery_timeout >= self.timeouts.attempt:
            raise ValueError(
                f"delivery_timeout ({format_duration(self.delivery_timeout)}) must be below "
                f"timeouts.attempt ({format_duration(self.timeouts.attempt)})"
            )
        return self


@dataclass(frozen=True)
class Message:
    """One record as it is produced."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None


def _coordinates(item: OutgoingRecord) -> str:
    r = item.record
    return f"{r.topic}/{r.partition}/{r.offset}"


class RecordTooLarge(Exception):
    """A record larger than the topic (or ``max_request_size``) takes; it is never sent."""

    def __init__(self, size: int, limit: int, by: str) -> None:
        super().__init__(f"{size} bytes as produced, over the {limit} bytes of {by}")


_PERMANENT = (RecordTooLarge, MessageSizeTooLargeError, RecordTooLargeError, InvalidTimestampError)
"""Errors that concern the record itself: producing it again cannot succeed."""
_SESSION_BROKEN = (MessageSizeTooLargeError, OutOfOrderSequenceNumber)
"""Errors after which the idempotent producer's sequence numbers no longer match the brokers':
the producer is replaced."""


class KafkaDestination:
    """Produces records to one topic through one idempotent producer per worker process."""

    def __init__(self, config: KafkaDestinationConfig) -> None:
        self.config = config
        self._producer: AIOKafkaProducer | None = None
        self._limit = config.max_request_size
        """Largest record (as a batch of one) sent: max_request_size or the topic's limit."""
        self._limit_by = "max_request_size"
        self._key = None if config.key is None else Template(config.key, "key")
        self._headers = [
            (name, Template(value, f"headers.{name}")) for name, value in config.headers.items()
        ]
        value = config.value
        self._value_mapping = (
            Expression(value.mapping, "value.mapping")
            if isinstance(value, ValueMapping) and value.mapping is not None
            else None
        )
        self._value_template = (
            Template(value.template, "value.template")
            if isinstance(value, ValueMapping) and value.template is not None
            else None
        )
        self._needs_data = (
            self._key is not None
            or bool(self._headers)
            or self._value_mapping is not None
            or self._value_template is not None
        )
        self._abandoned: set[asyncio.Future[Any]] = set()
        """Deliveries of attempts that gave up waiting, still pending in the producer."""

    @property
    def _where(self) -> str:
        return f"{self.config.topic} at {self.config.bootstrap_servers}"

    async def open(self) -> None:
        """Connect to the destination cluster and check that the topic exists."""
        await self._connect()

    async def close(self) -> None:
        """Stop the producer, waiting a little for records it still holds."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop(producer)

    async def _connect(self) -> AIOKafkaProducer:
        """Read the topic's record size limit, then start a producer and check the topic.

        The topic's ``max.message.bytes`` bounds each record and the producer's batches: a
        request the brokers refuse as too large would fail every record in it and leave the
        idempotent producer's sequence numbers out of step.
        """
        c = self.config
        topic_limit = await self._topic_limit()
        self._limit, self._limit_by = c.max_request_size, "max_request_size"
        if topic_limit is not None and topic_limit < c.max_request_size:
            self._limit, self._limit_by = topic_limit, f"{c.topic}'s max.message.bytes"
        producer = AIOKafkaProducer(
            bootstrap_servers=c.bootstrap_servers,
            client_id=f"courier-{c.name}",
            acks="all",
            enable_idempotence=True,
            max_request_size=c.max_request_size,
            max_batch_size=min(DEFAULT_BATCH_BYTES, self._limit),
            request_timeout_ms=int(c.delivery_timeout.total_seconds() * 1000),
            **c.security.client_options(),
        )
        try:
            await producer.start()
        except (KafkaError, OSError) as err:
            await _stop(producer)
            raise self._unreachable(err) from err
        try:
            await self._check_topic(producer)
        except BaseException:
            await _stop(producer)
            raise
        self._producer = producer
        return producer

    def _unreachable(self, err: BaseException) -> RetryableExportError:
        return RetryableExportError(
            f"cannot reach Kafka at {self.config.bootstrap_servers} ({type(err).__name__}: "
            f"{err}); check bootstrap_servers and security",
            cause="unavailable",
        )

    async def _topic_limit(self) -> int | None:
        """The topic's ``max.message.bytes``; None when the user may not read it.

        RetryableExportError when the topic does not exist or the cluster cannot be reached.
        """
        c = self.config
        admin = AIOKafkaAdminClient(
            bootstrap_servers=c.bootstrap_servers,
            client_id=f"courier-{c.name}",
            request_timeout_ms=int(c.delivery_timeout.total_seconds() * 1000),
            **c.security.client_options(),
        )
        try:
            await admin.start()
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, c.topic, {"max.message.bytes": None})]
            )
        except (KafkaError, OSError) as err:
            raise self._unreachable(err) from err
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()
        [(error_code, _, _, _, entries)] = response.resources
        if error_code == UnknownTopicOrPartitionError.errno:
            raise self._missing()
        if error_code:
            log.warning(
                "%s: cannot read max.message.bytes of %s (Kafka error %d): records are bounded "
                "by max_request_size only",
                c.name,
                self._where,
                error_code,
            )
            return None
        values = [int(value) for name, value, *_ in entries if name == "max.message.bytes"]
        return values[0] if values else None

    def _missing(self) -> RetryableExportError:
        return RetryableExportError(
            f"topic {self._where} does not exist: create it (Courier never creates "
            "destination topics)"
        )

    async def _check_topic(self, producer: AIOKafkaProducer) -> None:
        """RetryableExportError unless the topic is in the cluster's metadata.

        The producer tracks no topic by name, so its metadata requests ask for all topics,
        which makes no broker create one (and ``send`` only ever finds the topic known).
        """
        cluster = producer.client.cluster
        if cluster.partitions_for_topic(self.config.topic) is not None:
            return
        if not await producer.client.force_metadata_update():
            raise RetryableExportError(
                f"cannot reach Kafka at {self.config.bootstrap_servers}: no broker answered a "
                "metadata request",
                cause="unavailable",
            )
        if self.config.topic in cluster.unauthorized_topics:
            raise RetryableExportError(
                f"not authorized to describe topic {self._where}: grant the user Describe and "
                "Write on it"
            )
        if cluster.partitions_for_topic(self.config.topic) is None:
            raise self._missing()

    def message(self, item: OutgoingRecord) -> Message:
        """The record as it is produced; MappingError when a mapping fails for it."""
        r = item.record
        data = record_data(item) if self._needs_data else {}
        if self._key is not None:
            key: bytes | None = self._key.render(data).encode("utf-8")
        else:
            key = r.key.to_bytes() if r.key is not None else None
        if self._value_mapping is not None:
            result = self._value_mapping.require(data)
            value: bytes | None = json.dumps(result, ensure_ascii=False).encode("utf-8")
        elif self._value_template is not None:
            value = self._value_template.render(data).encode("utf-8")
        elif self.config.value == "json":
            value = json.dumps(record_envelope(r), ensure_ascii=False).encode("utf-8")
        else:
            value = r.value.to_bytes() if r.value is not None else None
        if key is None and value is None:
            value = b""  # the client cannot send neither (dead letters do the same)
        headers: Headers = [
            (h.name, h.value.to_bytes() if h.value is not None else None)
            for h in r.headers
            if h.name not in COURIER_HEADERS
        ]
        headers += [(name, t.render(data).encode("utf-8")) for name, t in self._headers]
        headers += [
            (IDEMPOTENCY_HEADER, item.idempotency_key.encode("utf-8")),
            ("courier.topic", r.topic.encode("utf-8")),
        ]
        if r.topic_id is not None:
            headers.append(("courier.topic_id", r.topic_id.encode("ascii")))
        headers += [
            ("courier.partition", str(r.partition).encode("ascii")),
            ("courier.offset", str(r.offset).encode("ascii")),
        ]
        keep = self.config.timestamp == "source" and r.timestamp_ms >= 0
        return Message(key, value, headers, r.timestamp_ms if keep else None)

    def preview(self, item: OutgoingRecord) -> dict[str, object]:
        """What this record would be produced as, without producing it (``courier map``)."""
        message = self.message(item)
        return {
            "topic": self.config.topic,
            "bootstrap_servers": self.config.bootstrap_servers,
            "key": _shown(message.key),
            "headers": [[name, _shown(value)] for name, value in message.headers],
            "timestamp_ms": message.timestamp_ms,
            "value": _shown(message.value),
        }

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        """Produce every record and wait until all are acknowledged; e.g. ``3 records produced``."""
        if self._abandoned:
            raise RetryableExportError(
                f"{len(self._abandoned)} records of an earlier attempt still wait for Kafka "
                f"({self._where}) to acknowledge them; nothing more is sent until it does",
                cause="unavailable",
            )
        messages = [self._message(item) for item in batch]  # every mapping before any send
        producer = self._producer or await self._connect()
        await self._check_topic(producer)
        timeout = self.config.delivery_timeout.total_seconds()
        results: list[asyncio.Future[Any] | BaseException] = []
        for message in messages:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
                message.key, message.value, message.headers
            )
            if size > self._limit:
                results.append(RecordTooLarge(size, self._limit, self._limit_by))
                continue
            await pace(1)
            try:
                async with asyncio.timeout(timeout):
                    results.append(await self._send(producer, message))
            except (KafkaError, TimeoutError) as err:
                results.append(err)
        pending = [r for r in results if isinstance(r, asyncio.Future)]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        outcomes = [self._outcome(r) for r in results]
        failures = [
            (item, err)
            for item, err in zip(batch, outcomes, strict=True)
            if isinstance(err, BaseException)
        ]
        if not failures:
            return f"{len(batch)} record{'' if len(batch) == 1 else 's'} produced"
        if any(isinstance(err, _SESSION_BROKEN) for _, err in failures) and (
            self._producer is producer
        ):
            # A limit lowered since the topic was read, or the sequence out of step: the next
            # write starts a new producer session, reading the topic's limit again.
            self._producer = None
            await _stop(producer)
        error = self._error(batch, failures)
        error.confirmed = frozenset(
            item.idempotency_key
            for item, outcome in zip(batch, outcomes, strict=True)
            if outcome is None
        )
        if isinstance(error, PermanentExportError):
            error.reached = len(failures) < len(batch) or not all(
                isinstance(err, RecordTooLarge) for _, err in failures
            )
        raise error

    def _message(self, item: OutgoingRecord) -> Message:
        try:
            return self.message(item)
        except MappingError as err:
            raise PermanentExportError(
                f"{_coordinates(item)}: {err.reason}", reached=False
            ) from err

    async def _send(self, producer: AIOKafkaProducer, message: Message) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await producer.send(
            self.config.topic,
            value=message.value,
            key=message.key,
            headers=message.headers,
            timestamp_ms=message.timestamp_ms,
        )
        return future

    def _outcome(self, result: asyncio.Future[Any] | BaseException) -> BaseException | None:
        """None when the record is acknowledged, else why not."""
        if isinstance(result, BaseException):
            return result
        if not result.done():
            self._abandoned.add(result)
            result.add_done_callback(self._abandoned.discard)
            return TimeoutError()
        if result.cancelled():
            dropped: BaseException = KafkaError("the producer dropped it (it was closed)")
            return dropped
        err: BaseException | None = result.exception()
        return err

    def _error(
        self,
        batch: Sequence[OutgoingRecord],
        failures: list[tuple[OutgoingRecord, BaseException]],
    ) -> ExportError:
        """The error of a batch with failed records: permanent if any record's own fault."""
        prefix = "" if len(batch) == 1 else f"{len(failures)} of {len(batch)} records failed; "
        permanent = [(i, e) for i, e in failures if isinstance(e, _PERMANENT)]
        if permanent and not any(isinstance(e, _SESSION_BROKEN) for _, e in failures):
            item, err = permanent[0]
            return PermanentExportError(prefix + f"{_coordinates(item)}: {self._reason(err)}")
        item, err = failures[0]
        if isinstance(err, RetryableExportError):
            return RetryableExportError(prefix + err.reason, cause=err.cause)
        cause: Literal["unavailable", "other"] = (
            "unavailable" if isinstance(err, TimeoutError) or _retriable(err) else "other"
        )
        return RetryableExportError(
            prefix + f"{_coordinates(item)}: {self._reason(err)}", cause=cause
        )

    def _reason(self, err: BaseException) -> str:
        c = self.config
        if isinstance(err, TimeoutError):
            return (
                f"Kafka ({self._where}) did not acknowledge it within "
                f"{format_duration(c.delivery_timeout)} (delivery_timeout)"
            )
        if isinstance(err, RecordTooLarge):
            return f"too large for {self._where}: {err}"
        if isinstance(err, _SESSION_BROKEN):
            return (
                f"{self._where} refused a request ({type(err).__name__}; was the topic's "
                "max.message.bytes lowered?): retried with a new producer, which reads the "
                "topic's limit again"
            )
        if isinstance(err, (MessageSizeTooLargeError, RecordTooLargeError)):
            return f"too large for {self._where} ({type(err).__name__})"
        if isinstance(err, InvalidTimestampError):
            return (
                f"{self._where} refuses its timestamp (message.timestamp.* settings of the topic)"
            )
        if isinstance(err, TopicAuthorizationFailedError):
            return f"not authorized to write to {self._where}: grant the user Write on the topic"
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _retriable(err: BaseException) -> bool:
    return bool(getattr(err, "retriable", False))


def _shown(data: bytes | None) -> object:
    """Bytes as a preview shows them: text when UTF-8, else ``{"base64": …}``."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


async def _stop(producer: AIOKafkaProducer) -> None:
    """Stop a producer; records it cannot deliver within ``CLOSE_TIMEOUT_S`` are left behind."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await producer.stop()
    except TimeoutError:
        log.warning("Kafka producer did not stop within %.0fs; leaving it", CLOSE_TIMEOUT_S)
    except KafkaError as err:
        log.warning("Kafka producer stopped with an error: %s", err)
