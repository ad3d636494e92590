"""Kafka topic IDs (KIP-516): the identity of a topic, which its name is not.

A topic name can be reused: after a topic is deleted and created again under the same name, it is
a different topic whose offsets restart at 0. Offsets and progress remembered for the old topic
mean nothing for the new one (offset 0 of the new topic is not a record already exported). Since
Kafka 2.8 every topic has a topic ID, a random UUID given at creation, so a changed ID is how the
ingest loop can tell "topic X was recreated" from "topic X moved on".

aiokafka's metadata requests stop at v5, which has no topic IDs; this module defines Metadata v12
(a flexible version: request header v2, compact types, tagged fields) from aiokafka's protocol
primitives and sends it through the consumer's client. IDs are shown as Kafka shows them
(``kafka-topics --describe``): the 16 bytes in URL-safe base64 without padding, 22 characters.
"""

from __future__ import annotations

import base64
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO

from aiokafka import errors as kafka_errors
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

log = logging.getLogger("courier.ingest")

METADATA_API_KEY = 3
METADATA_VERSION = 12
"""The Metadata version used: the first that accepts a topic by name or by ID (Kafka 3.1+)."""
UNKNOWN_TOPIC_OR_PARTITION = 3
ZERO_UUID = bytes(16)
"""Kafka's "no ID" value, sent when asking by name and returned for missing topics."""


class TopicIdError(Exception):
    """A topic's ID cannot be had: an error code for the topic, or a broker too old for IDs."""

    def __init__(self, message: str, topic: str | None = None, error_code: int | None = None):
        super().__init__(message)
        self.topic = topic
        self.error_code = error_code


@dataclass(frozen=True)
class TopicIdChange:
    """A topic whose ID changed between two refreshes; None means "did not exist"."""

    topic: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class TopicIdRefresh:
    """What :meth:`TopicIds.refresh` found: every ID fetched, and the ones that changed."""

    ids: dict[str, str | None]
    changes: list[TopicIdChange]


def topic_id_to_str(raw: bytes) -> str:
    """Kafka's text form of a 16-byte topic ID: URL-safe base64 without padding."""
    if len(raw) != 16:
        raise ValueError(f"a topic ID has 16 bytes, not {len(raw)}")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def topic_id_from_str(text: str) -> bytes:
    """The 16 bytes of a topic ID given in Kafka's text form."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(raw) != 16:
        raise ValueError(f"{text!r} is not a topic ID (decodes to {len(raw)} bytes, not 16)")
    return raw


class Uuid(AbstractType[bytes]):  # type: ignore[misc]
    """The protocol's ``uuid`` type: 16 raw bytes (most significant half first)."""

    @classmethod
    def encode(cls, value: bytes) -> bytes:
        """The 16 bytes as they are."""
        if len(value) != 16:
            raise ValueError(f"a uuid has 16 bytes, not {len(value)}")
        return bytes(value)

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        """The next 16 bytes."""
        value = data.read(16)
        if len(value) != 16:
            raise ValueError("Buffer underrun decoding uuid")
        return value

    @classmethod
    def repr(cls, value: bytes) -> str:
        """Kafka's text form."""
        return topic_id_to_str(value)


class MetadataResponse_v12(Response):  # type: ignore[misc]
    """MetadataResponse v12 (MetadataResponse.json); topics are tuples in schema order."""

    API_KEY = METADATA_API_KEY
    API_VERSION = METADATA_VERSION
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class MetadataRequest_v12(RequestStruct):  # type: ignore[misc]
    """MetadataRequest v12 (MetadataRequest.json)."""

    FLEXIBLE_VERSION = True
    API_KEY = METADATA_API_KEY
    API_VERSION = METADATA_VERSION
    RESPONSE_TYPE = MetadataResponse_v12
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_id", Uuid),
                ("name", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class TopicMetadataRequest(Request[MetadataRequest_v12]):  # type: ignore[misc]
    """Metadata v12 for topics by name, never creating them; refuses brokers without v12."""

    API_KEY = METADATA_API_KEY

    def __init__(self, topics: Sequence[str]) -> None:
        self.topics = list(topics)

    def build(self, request_struct_class: type[MetadataRequest_v12]) -> MetadataRequest_v12:
        """The request struct: each topic by name (zero ID), auto-creation off."""
        return request_struct_class(
            [(ZERO_UUID, name, {}) for name in self.topics], False, False, {}
        )

    def prepare(self, versions: dict[int, tuple[int, int]]) -> MetadataRequest_v12:
        """Check the connection's negotiated Metadata versions, then build (called by aiokafka)."""
        supported = versions.get(METADATA_API_KEY)
        if supported is None or not supported[0] <= METADATA_VERSION <= supported[1]:
            shown = "unknown" if supported is None else f"v{supported[0]}-v{supported[1]}"
            raise TopicIdError(
                f"broker does not support topic IDs by name (Metadata v{METADATA_VERSION}, "
                f"it supports {shown}); Kafka 3.1 or newer is needed"
            )
        return self.build(MetadataRequest_v12)


async def fetch_topic_ids(client: AIOKafkaClient, topics: Iterable[str]) -> dict[str, str | None]:
    """Each topic's ID in Kafka's text form, or None if the topic does not exist.

    Raises :class:`TopicIdError` for any other error code of a topic and for brokers without
    Metadata v12; connection problems raise aiokafka's errors (:class:`KafkaError`) as usual.
    """
    names = list(dict.fromkeys(topics))
    if not names:
        return {}
    response = await _send(client, TopicMetadataRequest(names))
    found: dict[str, tuple[int, bytes]] = {}
    for error_code, name, topic_id, *_ in response.topics:
        found[name] = (error_code, topic_id)
    ids: dict[str, str | None] = {}
    for name in names:
        if name not in found:
            raise TopicIdError(f"topic {name!r}: missing from the metadata response", name)
        error_code, topic_id = found[name]
        if error_code == UNKNOWN_TOPIC_OR_PARTITION:
            ids[name] = None
        elif error_code != 0:
            error = kafka_errors.for_code(error_code).__name__
            raise TopicIdError(
                f"topic {name!r}: metadata error code {error_code} ({error})", name, error_code
            )
        elif topic_id == ZERO_UUID:
            raise TopicIdError(f"topic {name!r}: the broker has no topic ID for it", name)
        else:
            ids[name] = topic_id_to_str(topic_id)
    return ids


async def _send(client: AIOKafkaClient, request: TopicMetadataRequest) -> MetadataResponse_v12:
    # Like aiokafka's own metadata updates: any known broker can answer; try them in random
    # order. Connection errors of the last one are aiokafka's own (KafkaError), as for any request.
    node_ids = [broker.nodeId for broker in client.cluster.brokers()]
    if not node_ids:
        raise TopicIdError("the Kafka client knows no brokers yet (bootstrap it first)")
    random.shuffle(node_ids)
    for node_id in node_ids[:-1]:
        try:
            response: MetadataResponse_v12 = await client.send(node_id, request)
        except (TimeoutError, kafka_errors.KafkaError) as err:
            log.warning("cannot ask node %s for topic IDs (%r); trying another", node_id, err)
        else:
            return response
    response = await client.send(node_ids[-1], request)
    return response


class TopicIds:
    """The last known ID of each topic, refreshed on demand through a client."""

    def __init__(self, client: AIOKafkaClient) -> None:
        self._client = client
        self._ids: dict[str, str | None] = {}

    async def refresh(self, topics: Iterable[str]) -> TopicIdRefresh:
        """Fetch and store the IDs of ``topics``, noting those that changed since last fetched."""
        fetched = await fetch_topic_ids(self._client, topics)
        changes = [
            TopicIdChange(topic, self._ids[topic], new)
            for topic, new in fetched.items()
            if topic in self._ids and self._ids[topic] != new
        ]
        self._ids.update(fetched)
        return TopicIdRefresh(fetched, changes)

    def get(self, topic: str) -> str | None:
        """The topic's last fetched ID; None if it did not exist or was never fetched."""
        return self._ids.get(topic)
