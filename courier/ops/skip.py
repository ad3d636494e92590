"""``courier skip``: give up on the record a key is blocked on, and let the key go on.

Per-key ordering blocks a key at a record that failed for good (see ``workflows.export_key``).
Skipping it means the destination never gets that record (it stays in Kafka, and can be
exported again later, e.g. by re-driving); the key's next records follow at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import Client

from courier.ops.blocked import decide, find_blocked
from workflows.export_key import SKIP_UPDATE
from workflows.types import BlockedRecord


@dataclass(frozen=True)
class Skipped:
    """What ``courier skip`` did: the record given up on, its key and why it had failed."""

    workflow_id: str
    destination: str
    key: str
    record: BlockedRecord
    waiting: int
    """The key's records queued behind it, now on their way."""


async def skip(client: Client, identifier: str) -> Skipped:
    """Skip the record a key is blocked on; ``identifier`` is the record's or the key's ID.

    Raises ``BlockedKeyError`` saying why nothing was skipped.
    """
    blocked = await find_blocked(client, identifier)
    record = blocked.state.blocked
    assert record is not None  # find_blocked returns blocked keys only
    # The record ID guards against skipping a later record, should the key move on meanwhile.
    await decide(client, blocked.workflow_id, SKIP_UPDATE, record.idempotency_key)
    return Skipped(
        workflow_id=blocked.workflow_id,
        destination=blocked.state.destination,
        key=blocked.state.key,
        record=record,
        waiting=blocked.state.pending - 1,
    )
