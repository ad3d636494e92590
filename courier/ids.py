"""The one function that names a record's workflow, and so its identity everywhere."""

from __future__ import annotations

WORKFLOW_ID_PREFIX = "courier"


def workflow_id(*, group: str, topic: str, topic_id: str, partition: int, offset: int) -> str:
    """The workflow ID of a record: ``courier/<group>/<topic>@<topic ID>/<partition>/<offset>``.

    The topic ID (Kafka's topic UUID) is the identity: a topic deleted and created again under
    the same name gets a new ID and restarts its offsets at 0, so its records never collide
    with the old ones. The name is there for people. The ID is also the record's idempotency
    key at every destination.
    """
    return f"{WORKFLOW_ID_PREFIX}/{group}/{topic}@{topic_id}/{partition}/{offset}"


def range_workflow_id(*, group: str, topic: str, topic_id: str, partition: int, first: int) -> str:
    """The workflow ID of a batch-mode range, from its first offset: ``…/<first>/range``.

    Each record of the range keeps its own identity (:func:`workflow_id`) at the sinks.
    """
    offset_id = workflow_id(
        group=group, topic=topic, topic_id=topic_id, partition=partition, offset=first
    )
    return f"{offset_id}/range"
