"""Batch mode: hand off contiguous offset ranges of a partition as ``ExportRange`` workflows.

A range's workflow ID comes from its first offset and its last offset is kept in the workflow's
memo. Ingest commits only past ranges whose workflows exist, so after a crash it re-reads from
the start of a range: if that range's workflow exists already, ingest learns where it ended and
goes on from the next offset — ranges are found again exactly, no record is handed off twice or
skipped, whatever ``max_records`` and ``max_wait`` cut this time.

Transient Temporal errors retry with backoff (the partition waits), as in per-record mode; any
other error is logged as ERROR once a minute and retried (a range input is offsets only, so no
single record can make it invalid).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from courier import search_attributes as sa
from courier.config import CourierConfig
from courier.ids import range_workflow_id
from ingest.handoff import TRANSIENT_STATUSES, ThrottledLog
from ingest.routing import RouteDecision, Router
from workflows.export_range import ExportRange
from workflows.types import ExportRangeInput, FailedRecord, RangeSlice

LAST_OFFSET_MEMO = "last_offset"


@dataclass
class OpenRange:
    """Records of one partition gathered for the next range: offsets and keys only (or, when a
    routing rule needs the whole record, the decision made when it was read)."""

    opened: float = field(default_factory=time.monotonic)
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | RouteDecision | None] = field(default_factory=list)

    def add(self, offset: int, key: bytes | RouteDecision | None) -> None:
        """Add the next record of the partition."""
        self.offsets.append(offset)
        self.keys.append(key)

    def ready(self, max_records: int, max_wait_s: float) -> bool:
        """Full, or waited long enough."""
        return len(self.offsets) >= max_records or (
            bool(self.offsets) and time.monotonic() - self.opened >= max_wait_s
        )


@dataclass(frozen=True)
class RangeHandOff:
    """Outcome of a range hand-off: the last offset now covered by started workflows."""

    covered_until: int
    started: int
    """Records handed off in ranges started by this call (skipped ones not counted)."""
    existing: int
    """Records found in ranges an earlier run had started."""
    skipped: int


def range_input(
    config: CourierConfig,
    router: Router,
    *,
    topic: str,
    topic_id: str,
    partition: int,
    offsets: list[int],
    keys: list[bytes | RouteDecision | None],
) -> tuple[ExportRangeInput, int]:
    """The workflow input of a range, and how many of its records were skipped (no route)."""
    by_destination: dict[str, list[int]] = {}
    failed: list[FailedRecord] = []
    skipped = 0
    for offset, key in zip(offsets, keys, strict=True):
        decision = router.route(key)
        if decision.destination is not None:
            by_destination.setdefault(decision.destination, []).append(offset)
        elif decision.action == "skip":
            skipped += 1
        else:
            failed.append(FailedRecord(offset, None, decision.reason))
    slices = [
        RangeSlice(destination=config.destination(name).policy(), offsets=found)
        for name, found in by_destination.items()
    ]
    return (
        ExportRangeInput(
            group=config.kafka.group,
            topic=topic,
            topic_id=topic_id,
            partition=partition,
            first_offset=offsets[0],
            last_offset=offsets[-1],
            slices=slices,
            failed=failed,
        ),
        skipped,
    )


async def hand_off_range(
    client: Client,
    config: CourierConfig,
    router: Router,
    *,
    topic: str,
    topic_id: str,
    partition: int,
    offsets: list[int],
    keys: list[bytes | RouteDecision | None],
    max_backoff: float = 30.0,
) -> RangeHandOff:
    """Start the workflows covering ``offsets`` (one, or more if earlier ranges overlap)."""
    started = existing = skipped = 0
    covered = offsets[0] - 1
    while offsets and offsets[-1] > covered:
        keep = [i for i, o in enumerate(offsets) if o > covered]
        offsets, keys = [offsets[i] for i in keep], [keys[i] for i in keep]
        workflow_input, skipped_here = range_input(
            config,
            router,
            topic=topic,
            topic_id=topic_id,
            partition=partition,
            offsets=offsets,
            keys=keys,
        )
        wid = range_workflow_id(
            group=config.kafka.group,
            topic=topic,
            topic_id=topic_id,
            partition=partition,
            first=offsets[0],
        )
        last = await start_range(client, config, wid, workflow_input, max_backoff=max_backoff)
        if last is None:
            started += len(offsets) - skipped_here
            skipped += skipped_here
            covered = offsets[-1]
        else:
            existing += sum(1 for o in offsets if o <= last)
            covered = last
    return RangeHandOff(covered, started=started, existing=existing, skipped=skipped)


async def start_range(
    client: Client,
    config: CourierConfig,
    wid: str,
    workflow_input: ExportRangeInput,
    *,
    max_backoff: float,
) -> int | None:
    """Start a range's workflow; None if started, else the existing range's last offset."""
    names = [piece.destination.name for piece in workflow_input.slices]
    attributes = TypedSearchAttributes(
        [
            SearchAttributePair(sa.TOPIC, workflow_input.topic),
            SearchAttributePair(sa.PARTITION, workflow_input.partition),
            SearchAttributePair(sa.OFFSET, workflow_input.first_offset),
            SearchAttributePair(
                sa.DESTINATION, names[0] if len(names) == 1 else "(several)" if names else "(none)"
            ),
        ]
    )
    delay, warning = 0.5, ThrottledLog()
    while True:
        try:
            await client.start_workflow(
                ExportRange.run,
                workflow_input,
                id=wid,
                task_queue=config.temporal.workflow_task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=attributes,
                memo={LAST_OFFSET_MEMO: workflow_input.last_offset},
                static_summary=f"[{workflow_input.first_offset}..{workflow_input.last_offset}] "
                f"→ {', '.join(names) or 'no destination'}"[:200],
            )
            return None
        except WorkflowAlreadyStartedError:
            description = await client.get_workflow_handle(wid).describe()
            return int(await description.memo_value(LAST_OFFSET_MEMO, type_hint=int))
        except RPCError as err:
            transient = err.status in TRANSIENT_STATUSES
            warning.log(
                logging.WARNING if transient else logging.ERROR,
                "starting %s failed (%s: %s); retrying%s",
                wid,
                err.status.name,
                err.message,
                "" if transient else " — check temporal.address, namespace and credentials",
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_backoff)
