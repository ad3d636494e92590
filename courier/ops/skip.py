"""``courier skip``: give up on the record a key is blocked on, and let the key go on.

Per-key ordering blocks a key at a record that failed for good (see ``workflows.export_key``).
Skipping it means the destination never gets that record (it stays in Kafka, and can be
exported again later, e.g. by re-driving); the key's next records follow at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from temporalio.client import Client

from courier.core.output import Output
from courier.ops.blocked import BlockedKeyError, decide, find_blocked
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


async def command(client: Client, identifier: str, *, as_json: bool, out: Output) -> int:
    """``courier skip``: skip, then say what was skipped and what goes on (or why nothing was)."""
    try:
        done = await skip(client, identifier)
    except BlockedKeyError as err:
        return out.fail(str(err))
    record = done.record
    if as_json:
        out.write(
            json.dumps(
                {
                    "skipped": record.idempotency_key,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "reason": record.reason,
                    "destination": done.destination,
                    "key": done.key,
                    "key_workflow_id": done.workflow_id,
                    "waiting": done.waiting,
                }
            )
            + "\n"
        )
        return 0
    out.out.print(
        f"skipped {record.topic}/{record.partition}/{record.offset} (it had failed: "
        f"{record.reason}); key {done.key!r} of {done.destination} goes on with its "
        f"{done.waiting} waiting record(s)",
        highlight=False,
        markup=False,
    )
    return 0
