"""What mappings cost per record, against the per-record export time in batch mode.

``python -m benchmarks.mapping [--rounds 5] [--records 20000] [--micro-records 5000]`` on the
running local stack.

1. **Per record, in-process** (no I/O): each kind's own code that turns one record into what it
   sends — REST ``build_request``, the file line, the PostgreSQL column arrays — with the
   default shape (envelope / fixed columns) and with a typical mapping (below), on the
   benchmark's records (``benchmarks.kafka_io.record``). CPU time of this thread
   (``time.thread_time``) over ``--micro-records`` records, per record; ``--rounds`` rounds;
   min / median / max. The mapping's cost is *mapped − default* (median of the per-round
   differences).
2. **End to end, batch mode**: ``courier-batch-file`` (file, ``fsync: never``) and
   ``courier-batch-postgres`` of ``benchmarks.courier_runs`` with and without the mapping,
   ``--records`` records each, the two variants interleaved in each round (order swapped every
   other round). The per-record export time is wall time / records of the unmapped run.

The goal (issue: mapping cost < 5% of the per-record export time in batch mode) is checked as
(median mapping cost) / (median per-record export time). The report is printed and written to
``docs/mapping-cost.md`` (``--no-docs`` skips that).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from temporalio.client import Client

from activities.files import record_line
from activities.mapping import Expression
from activities.postgres import MappedColumns, PostgresConfig, row_columns
from activities.rest import RestConfig, RestDestination
from benchmarks.courier_runs import run_batch
from benchmarks.kafka_io import delete_topic, fill_topic, record
from courier.core.ids import workflow_id
from courier_devtools.stack.settings import REPO_ROOT, settings_from_env
from workflows.types import Blob, KafkaRecord, OutgoingRecord

REST_URL = "http://partner.test/v1/orders/{value.n}"
REST_BODY = '{"orderId": value.n, "note": value.pad, "reference": key, "placedAt": timestamp}'
FILE_LINE = '{"id": value.n, "note": value.pad, "reference": key, "at": timestamp}'
COLUMNS: dict[str, Any] = {
    "id": {"type": "bigint", "mapping": "value.n"},
    "note": {"type": "text", "mapping": "value.pad"},
    "reference": {"type": "text", "mapping": "key"},
    "at": {"type": "timestamptz", "mapping": "timestamp"},
}
DOCS = REPO_ROOT / "docs" / "mapping-cost.md"


def items(n: int) -> list[OutgoingRecord]:
    """The benchmark's records as a destination gets them."""
    out = []
    for i in range(n):
        key, value = record(i)
        out.append(
            OutgoingRecord(
                idempotency_key=workflow_id(
                    group="bench", topic="t", topic_id="TID", partition=i % 3, offset=i
                ),
                record=KafkaRecord(
                    topic="t",
                    topic_id="TID",
                    partition=i % 3,
                    offset=i,
                    key=Blob.of(key),
                    value=Blob.of(value),
                    timestamp_ms=1_700_000_000_000 + i,
                ),
            )
        )
    return out


def _per_record_cpu_us(work: Callable[[], object], n: int) -> float:
    started = time.thread_time()
    work()
    return (time.thread_time() - started) / n * 1e6


def micro_cases(batch: list[OutgoingRecord]) -> dict[str, tuple[Callable[[], object], ...]]:
    """Per kind: (default shape, mapped shape) over the whole batch."""
    rest_default = RestDestination(RestConfig(name="r", kind="rest", url="http://p.test/{key}"))
    rest_mapped = RestDestination(
        RestConfig(name="r", kind="rest", url=REST_URL, body={"mapping": REST_BODY})
    )
    line = Expression(FILE_LINE, "line")
    pg = dict(name="p", kind="postgres", dsn="postgresql://h/db", table="t")
    pg_default = PostgresConfig(**pg)
    pg_mapped = MappedColumns(PostgresConfig(**pg, columns=COLUMNS))
    return {
        "rest": (
            lambda: [rest_default.build_request(None, i) for i in batch],
            lambda: [rest_mapped.build_request(None, i) for i in batch],
        ),
        "file": (
            lambda: [record_line(i) for i in batch],
            lambda: [record_line(i, line) for i in batch],
        ),
        "postgres": (
            lambda: row_columns(pg_default, batch),
            lambda: pg_mapped.arrays(batch),
        ),
    }


def micro(rounds: int, n: int) -> dict[str, dict[str, list[float]]]:
    """Per kind: CPU µs per record of the default and the mapped shape, and their difference."""
    batch = items(n)
    cases = micro_cases(batch)
    for default, mapped in cases.values():  # warm up (imports, caches)
        default()
        mapped()
    results: dict[str, dict[str, list[float]]] = {
        kind: {"default": [], "mapped": [], "cost": []} for kind in cases
    }
    for _ in range(rounds):
        for kind, (default, mapped) in cases.items():
            d = _per_record_cpu_us(default, n)
            m = _per_record_cpu_us(mapped, n)
            results[kind]["default"].append(d)
            results[kind]["mapped"].append(m)
            results[kind]["cost"].append(m - d)
    return results


async def end_to_end(rounds: int, n: int, tmp: Path) -> dict[tuple[str, str], list[float]]:
    """Per (kind, variant): wall seconds of each run of ``n`` records in batch mode."""
    settings = settings_from_env()
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    seconds: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        order = ["default", "mapped"] if r % 2 == 0 else ["mapped", "default"]
        for kind in ("file", "postgres"):
            for variant in order:
                mapping: dict[str, Any] | None = None
                if variant == "mapped":
                    mapping = {"line": FILE_LINE} if kind == "file" else {"columns": COLUMNS}
                unique = uuid.uuid4().hex[:10]
                topic = f"bench-map-{unique}"
                await fill_topic(settings.kafka_bootstrap, topic, n)
                run_dir = tmp / unique
                run_dir.mkdir()
                try:
                    measured = await run_batch(
                        settings,
                        client,
                        run_dir,
                        topic,
                        unique,
                        n,
                        pipeline=f"batch-{kind}-{variant}",
                        kind=kind,
                        fsync="never",
                        history_sample=0,
                        mapping=mapping,
                    )
                finally:
                    await delete_topic(settings.kafka_bootstrap, topic)
                seconds.setdefault((kind, variant), []).append(measured.seconds)
                print(
                    f"round {r + 1}: {kind} {variant}: {n / measured.seconds:,.0f} records/s",
                    flush=True,
                )
    return seconds


def _spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    ordered = sorted(values)
    return " / ".join(
        [
            fmt.format(ordered[0]),
            "**" + fmt.format(statistics.median(ordered)) + "**",
            fmt.format(ordered[-1]),
        ]
    )


def report(
    args: argparse.Namespace,
    micro_results: dict[str, dict[str, list[float]]],
    e2e: dict[tuple[str, str], list[float]],
    took: float,
) -> str:
    """The Markdown report."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# What mappings cost",
        "",
        f"Generated by `python -m benchmarks.mapping --rounds {args.rounds} --micro-records "
        f"{args.micro_records} --e2e-rounds {args.e2e_rounds} --records {args.records}` "
        f"(`benchmarks/mapping.py`) on "
        f"{now}; the run took {took / 60:.1f} min. Machine: {os.cpu_count()} CPUs, the local "
        "stack shared with other work (figures vary with that load: see min/max).",
        "",
        "Mappings used (the demo's shapes, on the benchmark's records "
        '`{"n": i, "pad": "x"×64}`):',
        "",
        f"- REST: `url: {REST_URL}`, `body: {{mapping: {REST_BODY}}}`",
        f"- file: `line: {FILE_LINE}`",
        "- PostgreSQL: `columns` "
        + ", ".join(f"`{n}` {c['type']} ← `{c['mapping']}`" for n, c in COLUMNS.items()),
        "",
        "## Per record, in-process (CPU µs, min / **median** / max)",
        "",
        "| kind | default shape | mapped | mapping cost (mapped − default) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for kind, r in micro_results.items():
        lines.append(
            f"| {kind} | {_spread(r['default'])} | {_spread(r['mapped'])} | {_spread(r['cost'])} |"
        )
    lines += [
        "",
        "## End to end, batch mode (records/s, min / **median** / max)",
        "",
        "| kind | default shape | mapped | per-record export time, default (µs): median, "
        "fastest run | mapping cost / export time: median, fastest run |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    micro_kind = {"file": "file", "postgres": "postgres"}
    for kind in ("file", "postgres"):
        default = e2e.get((kind, "default"), [])
        mapped = e2e.get((kind, "mapped"), [])
        if not default or not mapped:
            continue
        rate_d = [args.records / s for s in default]
        rate_m = [args.records / s for s in mapped]
        per_record_us = statistics.median(default) / args.records * 1e6
        fastest_us = min(default) / args.records * 1e6
        cost = statistics.median(micro_results[micro_kind[kind]]["cost"])
        lines.append(
            f"| {kind} | {_spread(rate_d, '{:,.0f}')} | {_spread(rate_m, '{:,.0f}')} | "
            f"{per_record_us:.0f}, {fastest_us:.0f} | {cost / per_record_us:.1%}, "
            f"{cost / fastest_us:.1%} |"
        )
    lines += [
        "",
        "*Per-record export time* is the unmapped run's wall time divided by its records "
        "(ingest, Temporal, the worker and the write together, as a user waits for them); "
        "the fastest run gives the smallest export time, so the largest share. *Mapping cost / "
        "export time* divides the median in-process mapping cost by it. The end-to-end runs show "
        "the whole pipeline with and without the mapping; on this shared machine their spread "
        "is wider than the mapping's cost, which is why the cost is taken from the in-process "
        "measurement.",
        "",
    ]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    micro_results = micro(args.rounds, args.micro_records)
    for kind, r in micro_results.items():
        print(f"{kind}: mapping cost {statistics.median(r['cost']):.1f} µs/record (median)")
    e2e: dict[tuple[str, str], list[float]] = {}
    if args.records:
        with tempfile.TemporaryDirectory(prefix="courier-bench-map-") as tmp:
            e2e = await end_to_end(args.e2e_rounds, args.records, Path(tmp))
    text = report(args, micro_results, e2e, time.monotonic() - started)
    print(text)
    if not args.no_docs:
        DOCS.write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="Rounds of the in-process part.")
    parser.add_argument("--micro-records", type=int, default=5000, help="Records per round.")
    parser.add_argument("--e2e-rounds", type=int, default=3, help="Rounds end to end.")
    parser.add_argument(
        "--records", type=int, default=20000, help="Records per end-to-end run (0: skip)."
    )
    parser.add_argument("--no-docs", action="store_true", help="Do not write docs/mapping-cost.md.")
    asyncio.run(main(parser.parse_args()))
