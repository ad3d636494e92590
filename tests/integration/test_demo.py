"""The demo (``make demo``) end to end, with few records so the throttled destination is quick."""

from __future__ import annotations

import io
from urllib.parse import unquote

import pytest
from rich.console import Console

from courier_devtools.demo import demo_keys, run_demo
from courier_devtools.stack import StackSettings

RECORDS = 24


def test_demo_keys_reach_every_destination_in_the_planned_mix() -> None:
    keys = demo_keys(300)
    assert len(keys) == len(set(keys)) == 300
    assert sum(k.startswith("order-") for k in keys) == 60  # ~12 s at orders-api's 5/s
    assert {k.split("-")[0] for k in keys[:8]} == {"order", "audit", "event", "note"}  # interleaved


@pytest.mark.integration
async def test_demo_exports_every_record_once_per_destination(stack: StackSettings) -> None:
    out = io.StringIO()
    result = await run_demo(
        records=RECORDS,
        timeout=120,
        keep_stack=True,
        settings=stack,
        console=Console(file=out, width=120),
    )

    assert not result.timed_out and result.error is None, out.getvalue()
    assert set(result.destinations) == {"orders-api", "audit-api", "archive", "warehouse"}
    assert sum(d.routed for d in result.destinations.values()) == RECORDS
    for d in result.destinations.values():
        assert d.routed > 0, d
        assert (d.exported, d.duplicates, d.failed) == (d.routed, 0, 0), (d, out.getvalue())
    orders = result.destinations["orders-api"]
    assert orders.rate_limit == 5 and orders.observed_rate is not None
    assert result.ok
    assert unquote(result.ui_link).endswith(f'?query=CourierTopic="{result.topic}"')
    assert "exported exactly once" in out.getvalue()
