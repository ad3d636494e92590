"""``courier config check`` and ``courier config schema``: the config summarised; its schema."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from courier.config.lint import lint_file
from courier.config.model import CourierConfig
from courier.core.output import Output
from courier.core.rates import format_rate

PER_RECORD_ADVISED = 20.0
"""Records/s in all above which ``config check`` advises batch mode: per-record mode carried
42–71 records/s in all on a 2-core machine with the Temporal dev server, and its destinations
stopped holding their limits well below that (README, "Per-record or batch mode";
docs/benchmarks.md): every record costs the server a workflow and an activity."""


def rate_estimate(config: CourierConfig) -> str:
    """What the destinations' rate limits add up to, and which mode suits it."""
    limited = [d.rate_limit for d in config.destinations if d.rate_limit is not None]
    unlimited = len(config.destinations) - len(limited)
    total = sum(limited)
    if not limited:
        line = "no destination has a rate limit"
    else:
        line = f"rate limits add up to {format_rate(total)}"
        if unlimited:
            line += f"; {unlimited} destination(s) have none"
    carried = "per-record mode carried 42–71 records/s in all on a 2-core benchmark machine"
    if config.ingest.mode == "per_record" and total > PER_RECORD_ADVISED:
        line += (
            f"; {carried}: above about {format_rate(PER_RECORD_ADVISED)}, set ingest.mode: batch"
        )
    elif config.ingest.mode == "per_record" and unlimited:
        line += f"; {carried}"
    return line


def check(config: CourierConfig, path: Path, out: Output) -> int:
    """Print the valid config's destinations as a table, then its routes in one line."""
    table = Table(title=f"{path}: valid")
    for column in ("destination", "kind", "task queue", "rate limit", "concurrency", "retries"):
        table.add_column(column)
    for dest in config.destinations:
        attempts = dest.retry.maximum_attempts
        table.add_row(
            dest.name,
            dest.kind,
            dest.task_queue,
            format_rate(dest.rate_limit),
            str(dest.max_concurrency),
            "forever" if attempts == 0 else f"{attempts} attempts",
        )
    out.out.print(table)
    rules = ", ".join(
        f"{r.exact or r.prefix or r.regex!s}→{r.destination}" for r in config.routes.rules
    )
    out.out.print(
        f"routes: {rules or '(none)'}; default: {config.routes.default or '(none)'}; "
        f"unmatched: {config.routes.unmatched}"
    )
    out.out.print(rate_estimate(config), highlight=False, markup=False)
    for warning in lint_file(path, config):
        out.warning(warning)
    return 0


def schema() -> str:
    """The JSON schema of the config file, indented, with a final newline."""
    return json.dumps(CourierConfig.model_json_schema(), indent=2) + "\n"
