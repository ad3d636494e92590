"""Metadata v12 on the wire, topic ID text form, and the topic ID cache (without a broker)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from ingest.topic_ids import (
    ZERO_UUID,
    MetadataRequest_v12,
    MetadataResponse_v12,
    TopicIdChange,
    TopicIdError,
    TopicIdRefresh,
    TopicIds,
    TopicMetadataRequest,
    fetch_topic_ids,
    topic_id_from_str,
    topic_id_to_str,
)

BROKER_VERSIONS = {3: (0, 13)}  # what a Kafka 4.x broker announces for Metadata (API key 3)
ID_A = bytes(range(16))  # 00 01 02 ... 0f


def test_request_bytes_for_one_topic_by_name() -> None:
    struct = TopicMetadataRequest(["t"]).prepare(BROKER_VERSIONS)
    assert isinstance(struct, MetadataRequest_v12)
    assert struct.encode() == (
        b"\x02"  # topics: compact array, length + 1 = 2
        + b"\x00" * 16  # topic_id: zero uuid (asking by name)
        + b"\x02t"  # name: compact string, length + 1 = 2, "t"
        + b"\x00"  # the topic's tagged fields: none
        + b"\x00"  # allow_auto_topic_creation: false
        + b"\x00"  # include_topic_authorized_operations: false
        + b"\x00"  # tagged fields: none
    )
    # Flexible version: request header v2 (client_id stays a non-compact string, tags at the end).
    assert struct.build_request_header(correlation_id=7, client_id="c").encode() == (
        b"\x00\x03"  # api_key 3
        + b"\x00\x0c"  # api_version 12
        + b"\x00\x00\x00\x07"  # correlation_id
        + b"\x00\x01c"  # client_id: int16 length, "c"
        + b"\x00"  # tagged fields: none
    )
    # ... and response header v1: correlation_id, then tagged fields.
    header = struct.parse_response_header(b"\x00\x00\x00\x07\x00")
    assert header.correlation_id == 7


@pytest.mark.parametrize("versions", [{3: (0, 11)}, {3: (13, 13)}, {}])
def test_brokers_without_metadata_v12_are_refused_before_sending(
    versions: dict[int, tuple[int, int]],
) -> None:
    with pytest.raises(TopicIdError, match="does not support topic IDs"):
        TopicMetadataRequest(["t"]).prepare(versions)


# A response by hand: one broker, topic "a" (ID_A, one partition) and unknown topic "gone".
RESPONSE = (
    b"\x00\x00\x00\x00"  # throttle_time_ms 0
    + b"\x02"  # brokers: 1
    + b"\x00\x00\x00\x01"  # node_id 1
    + b"\x02h"  # host "h"
    + b"\x00\x00\x23\x84"  # port 9092
    + b"\x00"  # rack: null
    + b"\x00"  # broker tags
    + b"\x02c"  # cluster_id "c"
    + b"\x00\x00\x00\x01"  # controller_id 1
    + b"\x03"  # topics: 2
    + b"\x00\x00"  # error_code 0
    + b"\x02a"  # name "a"
    + ID_A  # topic_id
    + b"\x00"  # is_internal false
    + b"\x02"  # partitions: 1
    + b"\x00\x00"  # error_code 0
    + b"\x00\x00\x00\x00"  # partition_index 0
    + b"\x00\x00\x00\x01"  # leader_id 1
    + b"\x00\x00\x00\x05"  # leader_epoch 5
    + b"\x02\x00\x00\x00\x01"  # replica_nodes [1]
    + b"\x02\x00\x00\x00\x01"  # isr_nodes [1]
    + b"\x01"  # offline_replicas []
    + b"\x00"  # partition tags
    + b"\x80\x00\x00\x00"  # topic_authorized_operations: not requested (INT32_MIN)
    + b"\x00"  # topic tags
    + b"\x00\x03"  # error_code 3 UNKNOWN_TOPIC_OR_PARTITION
    + b"\x05gone"  # name "gone"
    + ZERO_UUID  # topic_id: zero for a missing topic
    + b"\x00"  # is_internal false
    + b"\x01"  # partitions: []
    + b"\x80\x00\x00\x00"  # topic_authorized_operations
    + b"\x00"  # topic tags
    + b"\x00"  # tagged fields
)


def test_hand_built_response_decodes() -> None:
    response = MetadataResponse_v12.decode(RESPONSE)
    assert response.brokers == [(1, "h", 9092, None, {})]
    assert response.cluster_id == "c"
    assert response.controller_id == 1
    assert response.topics == [
        (0, "a", ID_A, False, [(0, 0, 1, 5, [1], [1], [], {})], -(2**31), {}),
        (3, "gone", ZERO_UUID, False, [], -(2**31), {}),
    ]
    assert response.encode() == RESPONSE


class FakeClient:
    """Answers Metadata v12 from ``topics`` (name -> (error_code, raw id)) like a broker."""

    def __init__(self, topics: dict[str, tuple[int, bytes]], node_ids: tuple[int, ...] = (1,)):
        self.topics = topics
        self.cluster = self
        self._node_ids = node_ids
        self.requests: list[MetadataRequest_v12] = []

    def brokers(self) -> list[Any]:
        return [type("Broker", (), {"nodeId": node_id}) for node_id in self._node_ids]

    async def send(self, node_id: int, request: TopicMetadataRequest) -> MetadataResponse_v12:
        struct = request.prepare(BROKER_VERSIONS)
        self.requests.append(struct)
        topics: list[tuple[Any, ...]] = []
        for _, name, _ in struct.topics:
            error_code, raw = self.topics.get(name, (3, ZERO_UUID))
            topics.append((error_code, name, raw, False, [], -(2**31), {}))
        response = MetadataResponse_v12(0, [(1, "h", 9092, None, {})], "c", 1, topics, {})
        decoded: MetadataResponse_v12 = MetadataResponse_v12.decode(response.encode())
        return decoded


async def test_fetch_maps_ids_and_unknown_topics_to_none() -> None:
    client = FakeClient({"a": (0, ID_A)})
    ids = await fetch_topic_ids(client, ["a", "gone", "a"])
    assert ids == {"a": "AAECAwQFBgcICQoLDA0ODw", "gone": None}
    (struct,) = client.requests
    assert struct.allow_auto_topic_creation is False
    assert [name for _, name, _ in struct.topics] == ["a", "gone"]


async def test_no_topics_no_request() -> None:
    client = FakeClient({})
    assert await fetch_topic_ids(client, []) == {}
    assert client.requests == []


async def test_other_topic_errors_name_topic_and_code() -> None:
    client = FakeClient({"secret": (29, ZERO_UUID)})
    with pytest.raises(TopicIdError, match=r"'secret'.*code 29 \(TopicAuthorizationFailedError\)"):
        await fetch_topic_ids(client, ["secret"])


class PartlyDown(FakeClient):
    """Nodes in ``down`` fail to connect, as aiokafka reports it."""

    def __init__(self, node_ids: tuple[int, ...], down: set[int]):
        super().__init__({"a": (0, ID_A)}, node_ids)
        self.down = down

    async def send(self, node_id: int, request: TopicMetadataRequest) -> MetadataResponse_v12:
        if node_id in self.down:
            raise KafkaConnectionError(f"node {node_id} down")
        return await super().send(node_id, request)


async def test_another_broker_answers_when_one_is_down() -> None:
    for down in ({1}, {2}):
        client = PartlyDown((1, 2), down)
        assert await fetch_topic_ids(client, ["a"]) == {"a": topic_id_to_str(ID_A)}


async def test_connection_errors_stay_aiokafka_errors() -> None:
    with pytest.raises(KafkaConnectionError):
        await fetch_topic_ids(PartlyDown((1, 2), {1, 2}), ["a"])
    with pytest.raises(TopicIdError, match="knows no brokers"):
        await fetch_topic_ids(FakeClient({}, node_ids=()), ["a"])


async def test_refresh_reports_ids_that_changed() -> None:
    id_b = bytes(range(16, 32))
    client = FakeClient({"a": (0, ID_A), "b": (0, id_b)})
    ids = TopicIds(client)
    first = await ids.refresh(["a", "b", "c"])
    assert first.changes == []  # first sight of a topic is not a change
    assert first.ids == {"a": topic_id_to_str(ID_A), "b": topic_id_to_str(id_b), "c": None}
    assert ids.get("a") == topic_id_to_str(ID_A)

    client.topics = {"a": (0, id_b[::-1]), "b": (0, id_b), "c": (0, ID_A)}  # a recreated, c new
    second = await ids.refresh(["a", "b", "c"])
    assert second.changes == [
        TopicIdChange("a", topic_id_to_str(ID_A), topic_id_to_str(id_b[::-1])),
        TopicIdChange("c", None, topic_id_to_str(ID_A)),
    ]
    assert ids.get("a") == topic_id_to_str(id_b[::-1])
    assert ids.get("never-asked") is None

    client.topics = {}
    third = await ids.refresh(["b"])
    assert third == TopicIdRefresh({"b": None}, [TopicIdChange("b", topic_id_to_str(id_b), None)])


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (ID_A, "AAECAwQFBgcICQoLDA0ODw"),
        (ZERO_UUID, "AAAAAAAAAAAAAAAAAAAAAA"),
        # URL-safe alphabet: 0xfbefbe is "++++" in standard base64, "----" here; 0xff -> "_w".
        (b"\xfb\xef\xbe" * 5 + b"\xff", "-" * 20 + "_w"),
        # As the broker stores it in <topic>-0/partition.metadata ("topic_id: ...").
        (topic_id_from_str("CwN7M_8gTK6caYWJ_a1lxQ"), "CwN7M_8gTK6caYWJ_a1lxQ"),
    ],
)
def test_topic_id_text_round_trip(raw: bytes, text: str) -> None:
    assert topic_id_to_str(raw) == text
    assert len(text) == 22
    assert topic_id_from_str(text) == raw


def test_malformed_topic_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        topic_id_to_str(b"\x00" * 15)
    with pytest.raises(ValueError, match="not a topic ID"):
        topic_id_from_str("AAAA")
