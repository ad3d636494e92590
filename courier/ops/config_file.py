"""``courier config check`` and ``courier config schema``: the config summarised; its schema."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from courier.config.lint import lint_file
from courier.config.model import CourierConfig, RouteRule
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


def _matcher(rule: RouteRule) -> tuple[str, str]:
    """Which matcher a rule uses (``exact``, ``prefix``, ``regex`` or ``when``) and its text."""
    for kind in ("exact", "prefix", "regex", "when"):
        value = getattr(rule, kind)
        if value is not None:
            return kind, value
    raise AssertionError("a rule has exactly one matcher")  # RouteRule validates it


def check_json(config: CourierConfig, path: Path, warnings: list[str]) -> dict[str, object]:
    """The valid config summarised for ``courier config check --json`` (docs/cli-json.md)."""
    limited = [d.rate_limit for d in config.destinations if d.rate_limit is not None]
    total = sum(limited) if limited else None
    return {
        "path": str(path),
        "valid": True,
        "ingest_mode": config.ingest.mode,
        "destinations": [
            {
                "name": d.name,
                "kind": d.kind,
                "task_queue": d.task_queue,
                "rate_limit": d.rate_limit,
                "max_concurrency": d.max_concurrency,
                "max_attempts": d.retry.maximum_attempts,
                "ordering": d.ordering,
            }
            for d in config.destinations
        ],
        "routes": {
            "rules": [
                {"match": kind, "pattern": pattern, "destination": rule.destination}
                for rule in config.routes.rules
                for kind, pattern in [_matcher(rule)]
            ],
            "default": config.routes.default,
            "unmatched": config.routes.unmatched,
        },
        "rate_limit_total": total,
        "unlimited_destinations": len(config.destinations) - len(limited),
        "batch_advised": config.ingest.mode == "per_record"
        and total is not None
        and total > PER_RECORD_ADVISED,
        "warnings": warnings,
    }


def check(config: CourierConfig, path: Path, out: Output, *, as_json: bool = False) -> int:
    """Print the valid config's destinations as a table, then its routes in one line (or all
    of it as one JSON object); its warnings on stderr."""
    warnings = lint_file(path, config)
    if as_json:
        out.write_json(check_json(config, path, warnings))
    else:
        _render(config, path, out)
    for warning in warnings:
        out.warning(warning)
    return 0


def _render(config: CourierConfig, path: Path, out: Output) -> None:
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
    rules = ", ".join(f"{_matcher(r)[1]}→{r.destination}" for r in config.routes.rules)
    out.out.print(
        f"routes: {rules or '(none)'}; default: {config.routes.default or '(none)'}; "
        f"unmatched: {config.routes.unmatched}",
        markup=False,  # a regex's [a-z] is not a style
    )
    out.out.print(rate_estimate(config), highlight=False, markup=False)


def schema() -> str:
    """The JSON schema of the config file, indented, with a final newline."""
    return json.dumps(CourierConfig.model_json_schema(), indent=2) + "\n"
