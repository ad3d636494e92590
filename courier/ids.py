"""The one function that names a record's workflow."""

from __future__ import annotations

WORKFLOW_ID_PREFIX = "courier"


def workflow_id(*, group: str, topic: str, partition: int, offset: int) -> str:
    """The workflow ID of a record: ``courier/<group>/<topic>/<partition>/<offset>``.

    It is also the record's idempotency key at every destination.
    """
    return f"{WORKFLOW_ID_PREFIX}/{group}/{topic}/{partition}/{offset}"
