from datetime import timedelta

import pytest
from pydantic import TypeAdapter, ValidationError

from courier.core.durations import Duration
from courier.core.ids import workflow_id
from workflows.types import Blob


def test_workflow_id_names_group_topic_and_its_id_partition_offset() -> None:
    wid = workflow_id(group="g", topic="orders", topic_id="AAAA", partition=2, offset=41)
    assert wid == "courier/g/orders@AAAA/2/41"


def test_a_recreated_topic_gets_other_workflow_ids() -> None:
    old = workflow_id(group="g", topic="t", topic_id="old", partition=0, offset=0)
    new = workflow_id(group="g", topic="t", topic_id="new", partition=0, offset=0)
    assert old != new


def test_workflow_ids_differ_by_partition() -> None:
    a = workflow_id(group="g", topic="t", topic_id="x", partition=1, offset=10)
    b = workflow_id(group="g", topic="t", topic_id="x", partition=11, offset=0)
    assert a != b


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2), ("1m30s", 90), ("1h", 3600), (3, 3), ("2.5", 2.5)],
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert TypeAdapter(Duration).validate_python(text) == timedelta(seconds=seconds)


def test_bad_duration_says_how_to_write_one() -> None:
    with pytest.raises(ValidationError, match="write e.g. 500ms"):
        TypeAdapter(Duration).validate_python("soon")


@pytest.mark.parametrize("data", [b"plain text", "ünïcode".encode(), b"\xff\x00\x80binary", b""])
def test_blob_round_trips(data: bytes) -> None:
    blob = Blob.of(data)
    assert blob.to_bytes() == data
    assert blob.base64 == (data == b"\xff\x00\x80binary")
