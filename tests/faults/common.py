"""Helpers the fault scenarios share: records, waits that explain themselves, the row."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from temporalio.client import Client

from tests.faults.ledger import Ledger, RestSink, Sink, Tally, first_after, first_effects, tally
from tests.faults.processes import Fleet
from tests.faults.report import Row
from tests.integration.harness import statuses


def json_records(n: int, prefix: str = "k") -> list[tuple[bytes | None, bytes | None]]:
    """``n`` ordinary records: keys ``<prefix><i>``, small JSON values."""
    return [(f"{prefix}{i}".encode(), json.dumps({"n": i}).encode()) for i in range(n)]


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    what: str,
    explain: Callable[[], Awaitable[str]] | None = None,
    interval: float = 0.25,
) -> float:
    """Poll ``check`` until true; return ``time.monotonic()`` then. Fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return time.monotonic()
        if time.monotonic() > deadline:
            detail = await explain() if explain is not None else ""
            raise AssertionError(f"{what}: not after {timeout:.0f}s\n{detail}")
        await asyncio.sleep(interval)


async def wait_exported(
    sink: Sink,
    ledger: Ledger,
    fleet: Fleet,
    *,
    timeout: float,
    fids: set[str] | None = None,
    what: str = "every record exported",
) -> float:
    """Wait until every record (or every one of ``fids``) has an intact effect at ``sink``."""

    async def done() -> bool:
        return (await tally(sink, ledger, fids)).lost == 0

    async def explain() -> str:
        counted = await tally(sink, ledger, fids)
        return f"{counted.exported}/{counted.produced} exported; {counted.problems()}\n" + (
            fleet.tails()
        )

    return await wait_until(done, timeout=timeout, what=what, explain=explain)


async def workflow_counts(client: Client, topic: str) -> dict[str, int]:
    """This scenario's workflows by status (its topic name is its own)."""
    return await statuses(client, f"CourierTopic = '{topic}'")


async def wait_workflows_closed(
    client: Client, topic: str, expected: int, *, timeout: float
) -> dict[str, int]:
    """Wait until ``expected`` workflows of ``topic`` exist and none is running; their counts."""
    found: dict[str, int] = {}

    async def closed() -> bool:
        nonlocal found
        found = await workflow_counts(client, topic)
        return sum(found.values()) >= expected and not found.get("RUNNING")

    async def explain() -> str:
        return f"workflows by status: {found}"

    await wait_until(closed, timeout=timeout, what=f"{expected} workflows closed", explain=explain)
    return found


def fill(
    row: Row,
    scenario: str,
    counted: Tally,
    *,
    recovery_s: float | None = None,
    notes: str = "",
    **extra: object,
) -> None:
    """Put a scenario's count into its row (before the test asserts anything)."""
    row.scenario = scenario
    row.produced = counted.produced
    row.exported = counted.exported
    row.lost = counted.lost
    row.duplicate_effects = counted.duplicate_effects
    row.repeated_deliveries = counted.repeated_deliveries
    row.recovery_s = None if recovery_s is None else round(recovery_s, 1)
    row.notes = notes
    row.extra.update(extra)


def assert_clean(counted: Tally, fleet: Fleet | None = None) -> None:
    """produced N, exported N, lost 0, duplicate effects 0."""
    assert counted.exported == counted.produced and counted.lost == 0, (
        f"{counted.exported}/{counted.produced} exported: {counted.problems()}"
        + (f"\n{fleet.tails()}" if fleet is not None else "")
    )
    assert counted.duplicate_effects == 0, counted.problems()


async def flowing_again(
    client: Client, sink: RestSink, ledger: Ledger, since: float, since_wall: float
) -> tuple[float, dict[int, tuple[float, float]]]:
    """How long after ``since`` every partition was handed off and exported again.

    Per partition, the first record produced after ``since``: seconds until its workflow
    started (``since_wall`` is the same moment in wall-clock time) and until it was exported.
    Returns the latest export and the per-partition ``(hand-off s, export s)``.
    """
    effects = first_effects(await sink.deliveries())
    per_partition: dict[int, tuple[float, float]] = {}
    for partition, sent in sorted(first_after(ledger, since).items()):
        effect = effects[sent.fid]
        assert effect.idempotency_key is not None
        described = await client.get_workflow_handle(effect.idempotency_key).describe()
        per_partition[partition] = (
            round(described.start_time.timestamp() - since_wall, 1),
            round(effect.answered - since, 1),
        )
    return max(export for _, export in per_partition.values()), per_partition
