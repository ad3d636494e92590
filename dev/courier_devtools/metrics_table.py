"""The metric table of docs/monitoring.md, made from a scrape of a running Courier.

    python -m courier_devtools.metrics_table http://127.0.0.1:9400/metrics [--write FILE]

Scrape a process that has done some work (exported, failed, ingested): a labelled metric shows
its labels only once it has a series. ``--write`` replaces the table between the
``<!-- scrape:begin -->`` and ``<!-- scrape:end -->`` markers of FILE instead of printing it.
``--prefix`` chooses the families (default ``courier_``; ``temporal_`` for the SDK's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

BEGIN, END = "<!-- scrape:begin -->", "<!-- scrape:end -->"
_SUFFIXES = {
    "counter": ["_total"],
    "histogram": ["_bucket", "_sum", "_count"],
    "summary": ["", "_sum", "_count"],
    "info": ["_info"],
}


def series_names(family: Metric) -> list[str]:
    """The names a scrape shows for ``family`` (``_created`` series left out)."""
    return [family.name + suffix for suffix in _SUFFIXES.get(family.type, [""])]


def labels(family: Metric) -> list[str]:
    """Label names of the family's series, in first-seen order (``le`` and ``quantile`` out)."""
    seen: dict[str, None] = {}
    for sample in family.samples:
        for name in sample.labels:
            if name not in ("le", "quantile"):
                seen.setdefault(name)
    return list(seen)


def table(exposition: str, prefix: str = "courier_") -> str:
    """A Markdown table (metric, type, labels, meaning) of the families named ``prefix…``."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    parsed = [f for f in text_string_to_metric_families(exposition) if f.name.startswith(prefix)]
    # The text parser reads prometheus_client's *_created series as gauges of their own.
    created = {f.name + "_created" for f in parsed if f.type in ("counter", "histogram")}
    families = sorted((f for f in parsed if f.name not in created), key=lambda f: f.name)
    for family in families:
        names = ", ".join(f"`{n}`" for n in series_names(family))
        label_cells = ", ".join(f"`{n}`" for n in labels(family))
        if not family.samples:
            label_cells = "(no series in this scrape)"
        meaning = " ".join(family.documentation.split()).replace("|", "\\|")
        rows.append(f"| {names} | {family.type} | {label_cells} | {meaning} |")
    return "\n".join(rows)


def replace_between_markers(text: str, table_text: str) -> str:
    """``text`` with the part between :data:`BEGIN` and :data:`END` set to ``table_text``."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"the file has no {BEGIN} … {END} markers: add them where the table goes")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table_text}\n{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    """Scrape, then print the table or write it into a file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="metrics URL, e.g. http://127.0.0.1:9400/metrics")
    parser.add_argument("--prefix", default="courier_", help="family name prefix")
    parser.add_argument("--write", type=Path, help="replace the table in this file")
    args = parser.parse_args(argv)
    try:
        exposition = httpx.get(args.url, timeout=10).raise_for_status().text
    except httpx.HTTPError as err:
        raise SystemExit(f"cannot scrape {args.url}: {err}; is Courier running with it?") from None
    result = table(exposition, args.prefix)
    if args.write is None:
        sys.stdout.write(result + "\n")
    else:
        args.write.write_text(replace_between_markers(args.write.read_text(), result))


if __name__ == "__main__":
    main()
