"""The metrics table of docs/monitoring.md names exactly what a scrape of Courier's port shows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from courier.core import metrics

DOC = Path(__file__).parents[2] / "docs" / "monitoring.md"
BEGIN, END = "<!-- metrics:begin -->", "<!-- metrics:end -->"
PROBE = "metric-docs-probe"


def documented() -> set[str]:
    """The backticked names in the first column of the table between the markers."""
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC.name} lost its {BEGIN} … {END} markers"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0]
    names: set[str] = set()
    for line in table.splitlines():
        cells = line.split("|")
        if len(cells) > 2:  # a table row: "", first cell, ...
            names.update(re.findall(r"`([a-z_:][a-z0-9_:]*)`", cells[1]))
    return names


@pytest.fixture
def every_metric_has_a_child() -> Iterator[None]:
    """A labelled metric shows no sample until it has a child: give each one, then remove it."""
    labelled = [
        m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase) and m._labelnames
    ]
    for metric in labelled:
        metric.labels(*[PROBE] * len(metric._labelnames))
    yield
    for metric in labelled:
        metric.remove(*[PROBE] * len(metric._labelnames))


@pytest.mark.usefixtures("every_metric_has_a_child")
def test_documented_metrics_are_the_exposed_ones() -> None:
    exposition = generate_latest(REGISTRY).decode()
    exposed = {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in exposition.splitlines()
        if line.startswith("courier_")
    }
    # prometheus_client adds a *_created series (a timestamp) beside every counter and
    # histogram; the page says so once instead of listing each.
    exposed = {name for name in exposed if not name.endswith("_created")}
    assert exposed, "no courier_ metric in the exposition"
    docs = documented()
    assert docs == exposed, (
        f"documented but not exposed: {sorted(docs - exposed)}; "
        f"exposed but not documented: {sorted(exposed - docs)}"
    )


def test_counters_are_documented_with_their_total_suffix() -> None:
    assert "courier_records_exported_total" in documented()
    assert "courier_records_exported" not in documented()
