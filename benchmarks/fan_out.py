"""The seed case: six REST destinations, one topic.

``python -m benchmarks.fan_out [--rounds 3] [--seconds 15] [--bulk-records 1500]
[--mode per_record|batch|both] [--keep-temporal] [--no-docs]`` on the running local stack
(``make bench-fan-out``).

Five REST destinations with ``rate_limit`` 2, 5, 10, 20 and 50 records/s and one unthrottled
(``bulk``), all endpoints of this process's recording receiver (``courier_devtools.receiver``,
a path prefix each, answering 200 at once). Each throttled destination gets its limit ×
``--seconds`` records, bulk ``--bulk-records``; keys ``r2-<i>``, ``r5-<i>``, … ``bulk-<i>``,
interleaved round-robin into one list, produced into ONE 3-partition topic and routed by key
prefix. Courier must hold every limit, and no destination may slow another.

In each round, per mode (``per_record``, ``batch``), these trials run, the order reversed every
other round:

- *together, processes*: ``courier ingest``, ``courier worker --workflows`` and one
  ``courier worker -d NAME`` per destination, as in production;
- *together, run*: one ``courier run`` process holding all of it;
- each destination *alone* (processes): a config with that destination only, its records only.

Courier's processes start, and answer on ``/readyz``, before the records are produced: start-up
is not measured. Measured at the receiver, per destination and trial: the steady rate
(k − 1) / (t_last − t_first) over the middle 80 % of its effects (the first and last 10 %
dropped), over its limit; the busiest 1-second window; together / alone = steady rate together
÷ steady rate alone in the same round (bulk too); the drain time (first record produced → last
effect) against the ideal records / limit.

Targets (batch mode): every throttled destination within [0.97, 1.03] of its limit, no
1-second window above limit + 1, together / alone ≥ 0.95 for every destination, bulk
included. Per-record mode is held to the same targets and reported beside it.

The Temporal dev server starts on a fresh database first (``--keep-temporal`` keeps it); its
size at the end is reported. Every trial has its own topic, consumer group, workflow task queue
and destination names; its leftover workflows are terminated and its topic deleted. The
Markdown report is printed and written into ``docs/benchmarks.md`` between
``<!-- fan-out:start -->`` and ``<!-- fan-out:end -->`` (``--no-docs`` skips that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from temporalio.client import Client

from benchmarks.common import cpu_between, fresh_temporal, temporal_db_mb
from benchmarks.harness import (
    BATCH_MAX_RECORDS,
    BATCH_MAX_WAIT,
    BATCH_SIZE,
    PARTITIONS,
    SETTLE_S,
    Mode,
    Run,
    destination,
    interleave,
    machine_line,
    max_in_window,
    met,
    others_running,
    produce,
    spread,
    wait_effects,
    wait_quiet,
    write_section,
)
from courier_devtools.receiver import Receiver
from courier_devtools.stack.settings import REPO_ROOT, StackSettings, settings_from_env

PREFIX = "fan-out"
"""Names of the trials' topics, groups and workflow task queues start with it."""
WORKDIR = "bench-fan-out"
"""The trials' configs and logs, under the stack directory (it marks the trials' processes)."""
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
START_MARK = "<!-- fan-out:start -->"
END_MARK = "<!-- fan-out:end -->"
AFTER_MARK = "<!-- isolation:end -->"
"""Where the section goes the first time: right after the isolation section."""

LIMITS = (2.0, 5.0, 10.0, 20.0, 50.0)
"""The throttled destinations' rate limits, records/s."""
BULK = "bulk"
TRIM = 0.1
"""Share of a destination's effects dropped at each end before the steady rate is taken."""
STEADY_BAND = (0.97, 1.03)
TOGETHER_TARGET = 0.95
CONCURRENCY = 16
"""Every destination's ``max_concurrency`` (``harness.destination``)."""

Deployment = Literal["processes", "run"]
MODE_TITLES: dict[Mode, str] = {
    "per_record": "Per-record mode (`ingest.mode: per_record`)",
    "batch": "Batch mode (`ingest.mode: batch`)",
}


@dataclass(frozen=True)
class Dest:
    """One destination of the case: its short name (key and path prefix), limit, records."""

    short: str
    limit: float | None
    records: int

    @property
    def ideal_s(self) -> float | None:
        """Seconds its records take at its limit (None: unthrottled)."""
        return None if self.limit is None else self.records / self.limit


def case(seconds: float, bulk_records: int) -> list[Dest]:
    """The six destinations: limit × ``seconds`` records per throttled one, then bulk."""
    throttled = [Dest(f"r{limit:g}", limit, round(limit * seconds)) for limit in LIMITS]
    return [*throttled, Dest(BULK, None, bulk_records)]


@dataclass(frozen=True)
class Setup:
    """What one trial runs: a deployment, and all destinations or one alone."""

    deployment: Deployment
    only: str | None = None

    @property
    def label(self) -> str:
        """``together, processes``, ``together, run`` or ``alone, processes``."""
        return f"{'together' if self.only is None else 'alone'}, {self.deployment}"


def steady_rate(times: Sequence[float], trim: float = TRIM) -> float:
    """(k − 1) / (t_last − t_first) of the middle of ``times`` (sorted): ``trim`` of them
    dropped at each end; NaN if fewer than two remain or they share one instant."""
    cut = int(len(times) * trim)
    middle = times[cut : len(times) - cut]
    if len(middle) < 2 or middle[-1] <= middle[0]:
        return math.nan
    return (len(middle) - 1) / (middle[-1] - middle[0])


@dataclass
class Effects:
    """One destination's effects in one trial (receiver arrival times, monotonic seconds)."""

    dest: Dest
    times: list[float]
    produced: float
    """When the trial's first record was produced."""

    @property
    def steady(self) -> float:
        """Steady records/s (the middle 80 % of the effects)."""
        return steady_rate(self.times)

    @property
    def max_window(self) -> int:
        """Most effects in any 1-second window."""
        return max_in_window(self.times)

    @property
    def drain_s(self) -> float:
        """First record produced → this destination's last effect."""
        return self.times[-1] - self.produced


@dataclass
class FanTrial:
    """One trial: every destination's effects (empty if the trial failed)."""

    mode: Mode
    setup: Setup
    effects: dict[str, Effects] = field(default_factory=dict)
    busy: float = math.nan
    """Share of the machine's CPU time busy, first record produced → last effect."""
    temporal_cpu: float | None = None
    courier_cpu: float = math.nan
    """CPU seconds of the trial's Courier processes over the same span."""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: steady records/s per destination, the machine's load, the notes."""
        rates = ", ".join(f"{s} {e.steady:.2f}" for s, e in self.effects.items()) or "no figures"
        load = (
            f"busy {self.busy:.0%}, Courier {self.courier_cpu:.1f} CPU s, Temporal "
            + ("n/a" if self.temporal_cpu is None else f"{self.temporal_cpu:.1f}")
            + " CPU s"
        )
        notes = "".join(f"; {n}" for n in self.notes)
        return f"{self.mode} {self.setup.label}: {rates} records/s steady ({load}){notes}"


# ---------------------------------------------------------------------------------------- trial
async def fan_out_trial(
    client: Client,
    settings: StackSettings,
    workdir: Path,
    mode: Mode,
    setup: Setup,
    dests: Sequence[Dest],
) -> FanTrial:
    """One trial: Courier until every chosen destination had all its effects."""
    run = Run(client, settings, workdir, PREFIX)
    u = run.unique
    chosen = [d for d in dests if setup.only in (None, d.short)]
    trial = FanTrial(mode, setup)
    async with Receiver() as receiver:
        topic = run.topic("main")
        config = run.base_config(mode, [topic])
        config["destinations"] = [
            destination(
                f"{d.short}-{u}",
                f"{receiver.url}/{d.short}-{u}/{{key}}",
                mode,
                **({} if d.limit is None else {"rate_limit": d.limit}),
            )
            for d in chosen
        ]
        config["routes"] = {
            "rules": [{"prefix": f"{d.short}-", "destination": f"{d.short}-{u}"} for d in chosen]
        }
        keys = interleave([[f"{d.short}-{i}" for i in range(d.records)] for d in chosen])
        wanted = {f"/{d.short}-{u}/": d.records for d in chosen}
        slowest = max((d.ideal_s or 0.0 for d in chosen), default=0.0)
        timeout = max(300.0, len(keys) / 5, slowest * 3 + 120)
        try:
            await run.create_topics(topic)
            run.write_config(config)
            # Courier runs before the records come, as in production: start-up is not measured.
            if setup.deployment == "processes":
                run.launch()
            else:
                run.launch_one()
            await run.ready()
            before = run.cpu.snapshot()
            produced = time.monotonic()
            await produce(settings.kafka_bootstrap, topic, keys)
            times = await wait_effects(receiver, wanted, run, timeout)
            used = cpu_between(before, run.cpu.snapshot())
            trial.effects = {
                d.short: Effects(d, times[f"/{d.short}-{u}/"], produced) for d in chosen
            }
            trial.busy = used.machine_busy_pct / 100
            trial.temporal_cpu = used.seconds.get("temporal")
            trial.courier_cpu = sum(used.seconds.get(role) or 0.0 for role in run.cpu.extra)
            duplicates = {d.short: receiver.duplicates(f"/{d.short}-{u}/") for d in chosen}
            if any(duplicates.values()):
                trial.notes.append(
                    "duplicates: " + ", ".join(f"{s} {n}" for s, n in duplicates.items() if n)
                )
        except RuntimeError as err:  # a process exited or effects are missing: report, go on
            trial.notes.append(f"FAILED: {err}")
        finally:
            terminated = await run.cleanup()
    if terminated:
        trial.notes.append(f"{terminated} workflows still running after the last effect terminated")
    return trial


# --------------------------------------------------------------------------------------- report
Rounds = list[dict[tuple[Mode, Setup], FanTrial]]


@dataclass
class Row:
    """One table row: a destination in one kind of trial, one value per round that has it."""

    dest: Dest
    setup: Setup
    steady: list[float]
    windows: list[int]
    ratios: list[float]
    drains: list[float]
    held: list[bool]
    """Per round: every target of the row held."""

    def targets(self) -> list[Callable[[float, int, float | None], bool]]:
        """The row's targets, each taking (steady, busiest window, together/alone)."""
        checks: list[Callable[[float, int, float | None], bool]] = []
        if self.dest.limit is not None:
            limit: float = self.dest.limit
            low, high = STEADY_BAND
            checks.append(lambda s, w, r: low <= s / limit <= high)
            checks.append(lambda s, w, r: w <= limit + 1)
        if self.setup.only is None:
            checks.append(lambda s, w, r: r is not None and r >= TOGETHER_TARGET)
        return checks

    def met_on_median(self) -> bool | None:
        """Every target held by the medians (None: the row has no target or no figures)."""
        if not self.targets() or not self.steady:
            return None
        ratio = statistics.median(self.ratios) if self.ratios else None
        window = math.ceil(statistics.median(self.windows))
        steady = statistics.median(self.steady)
        return all(check(steady, window, ratio) for check in self.targets())


def rows_of(rounds: Rounds, mode: Mode, dests: Sequence[Dest]) -> list[Row]:
    """The table's rows for ``mode``: per destination together (both deployments) and alone."""
    rows = []
    for d in dests:
        for setup in (Setup("processes"), Setup("run"), Setup("processes", d.short)):
            row = Row(d, setup, [], [], [], [], [])
            for trials in rounds:
                trial = trials.get((mode, setup))
                effects = trial.effects.get(d.short) if trial else None
                if effects is None:
                    continue
                alone = trials.get((mode, Setup("processes", d.short)))
                alone_effects = alone.effects.get(d.short) if alone else None
                ratio = None
                if setup.only is None and alone_effects is not None:
                    ratio = effects.steady / alone_effects.steady
                    row.ratios.append(ratio)
                row.steady.append(effects.steady)
                row.windows.append(effects.max_window)
                row.drains.append(effects.drain_s)
                row.held.append(
                    all(c(effects.steady, effects.max_window, ratio) for c in row.targets())
                )
            rows.append(row)
    return rows


def _cell_met(row: Row) -> str:
    on_median = row.met_on_median()
    if on_median is None:
        return ""
    return f"{met(on_median)} ({sum(row.held)}/{len(row.held)})"


def _row_line(row: Row) -> str:
    d = row.dest
    limit = "—" if d.limit is None else f"{d.limit:g}/s"
    steady_limit = "—" if d.limit is None else spread([s / d.limit for s in row.steady], "{:.3f}")
    window = spread(row.windows, "{:.0f}") + ("" if d.limit is None else f" (≤ {d.limit + 1:g})")
    together = "—" if row.setup.only is not None else spread(row.ratios)
    ideal = d.ideal_s
    drain_ideal = "—" if ideal is None else spread([x / ideal for x in row.drains])
    return (
        f"| `{d.short}` | {limit} | {d.records} | {row.setup.label} "
        f"| {spread(row.steady, '{:.2f}')} | {steady_limit} | {window} | {together} "
        f"| {spread(row.drains, '{:.1f}')} | {'—' if ideal is None else f'{ideal:.1f}'} "
        f"| {drain_ideal} | {_cell_met(row)} |"
    )


def render(
    args: argparse.Namespace,
    rounds: Rounds,
    dests: Sequence[Dest],
    modes: Sequence[Mode],
    others: list[str],
    temporal_mb: tuple[float, float],
    started: dt.datetime,
    seconds: float,
) -> str:
    """The Markdown section (without the markers)."""
    throttled = [d for d in dests if d.limit is not None]
    bulk = next(d for d in dests if d.limit is None)
    total = sum(d.records for d in dests)
    lines = [
        "## The seed case: six REST destinations, one topic",
        "",
        f"Generated by `python -m benchmarks.fan_out --rounds {args.rounds} --seconds "
        f"{args.seconds:g} --bulk-records {args.bulk_records} --mode {args.mode}"
        f"{' --keep-temporal' if args.keep_temporal else ''}` (`make bench-fan-out`, "
        f"`benchmarks/fan_out.py`) on {started:%Y-%m-%d %H:%M} UTC; the run took "
        f"{seconds / 60:.1f} min. {machine_line()}",
        "",
    ]
    if others:
        lines += [
            "**Disturbed run**: other test or Courier processes ran on the machine and the shared "
            "stack during it (listed at the end). Rerun on a quiet machine before judging the "
            "targets.",
            "",
        ]
    lines += [
        "The case: five REST destinations with `rate_limit` "
        + ", ".join(f"{d.limit:g}" for d in throttled)
        + " records/s and one unthrottled (*bulk*), their records' keys interleaved in one "
        "topic. Courier must hold every limit, and no destination may slow another.",
        "",
        "Method:",
        "",
        f"- Records: limit × {args.seconds:g} s per throttled destination ("
        + ", ".join(f"`{d.short}` {d.records}" for d in throttled)
        + f"), {bulk.records} for `{bulk.short}`, {total} in all; keys `r2-<i>` … `bulk-<i>` "
        f"interleaved round-robin into one list, produced (acks=all) into one {PARTITIONS}-"
        "partition topic, routed by key-prefix rules. Each destination is a path prefix of a "
        "recording HTTP receiver in the benchmark's process, answering 200 at once; "
        f"`max_concurrency: {CONCURRENCY}` each.",
        f"- Modes: `per_record`; `batch` with `max_records: {BATCH_MAX_RECORDS}`, `max_wait: "
        f"{BATCH_MAX_WAIT}`, `batch_size: {BATCH_SIZE}`.",
        "- Trials, per mode in each round: *together, processes* (`courier ingest`, `courier "
        "worker --workflows` and one `courier worker -d NAME` per destination, as in "
        "production); *together, run* (one `courier run` process holding all of it); each "
        "destination *alone* (processes; a config with that destination only, its records "
        f"only). {args.rounds} rounds, the order of the trials reversed every other round; "
        "figures are min / **median** / max over the rounds.",
        "- Courier's processes start and answer 200 on `/readyz` before the records are "
        "produced, so start-up is not measured. Every trial has its own topic, consumer group, "
        "workflow task queue and destination names; after it its processes are stopped by PID, "
        "its workflows still running terminated and its topic deleted.",
        "- Measured at the receiver, effects being the first 2xx answer per Idempotency-Key "
        "(arrival time): *steady* = (k − 1) / (t_last − t_first) over the middle 80 % of a "
        "destination's effects (the first and last 10 % dropped), over its limit; *busiest "
        "1-s window*: most effects in any window [t, t + 1 s) starting at an effect, all "
        "effects counted; *together / alone*: steady together ÷ steady alone in the same round "
        "(bulk too); *drain*: first record produced → the destination's last effect, against "
        "the ideal records / limit.",
        "- Temporal: "
        + (
            "the database kept from before (`--keep-temporal`)"
            if args.keep_temporal
            else "a fresh database (the dev server stopped, its SQLite file deleted, started "
            "again) before the first trial"
        )
        + f"; {temporal_mb[0]:.0f} MB at the start, **{temporal_mb[1]:.0f} MB** at the end "
        "(database file and write-ahead log).",
        "",
        f"Targets (batch mode): every throttled destination's steady rate within "
        f"[{STEADY_BAND[0]}, {STEADY_BAND[1]}] of its limit, no 1-second window above limit + 1, "
        f"together / alone ≥ {TOGETHER_TARGET} for every destination, bulk included. Per-record "
        "mode is held to the same targets and reported beside it. *Met*: the medians meet "
        "every target of the row; in brackets, the rounds in which every value did.",
        "",
    ]
    for mode in modes:
        rows = rows_of(rounds, mode, dests)
        judged = [r for r in rows if r.met_on_median() is not None]
        failing = [r for r in judged if not r.met_on_median()]
        every_round = sum(1 for r in judged if r.held and all(r.held))
        verdict = (
            "**all met**"
            if not failing
            else "**not met** by " + "; ".join(f"`{r.dest.short}` {r.setup.label}" for r in failing)
        )
        lines += [
            f"### {MODE_TITLES[mode]}",
            "",
            f"Targets: {len(judged) - len(failing)} of {len(judged)} rows met on the medians, "
            f"{every_round} of {len(judged)} in every round; {verdict}.",
            "",
            "| destination | limit | records | trial | steady records/s | steady / limit "
            "| busiest 1-s window (target) | together / alone | drain, s | ideal, s "
            "| drain / ideal | met |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
            *(_row_line(r) for r in rows),
            "",
        ]
    lines += [
        "### Per round",
        "",
        "Steady records/s per destination in each trial (listed in one order; they ran in the "
        "reverse order every other round), with the machine's load from the first record "
        "produced to the last effect:",
        "",
    ]
    for i, trials in enumerate(rounds, 1):
        lines += [f"- round {i}, {trial.summary()}" for trial in trials.values()]
    distinct = sorted(set(others))
    lines += [
        "",
        "Other pytest or courier processes seen on the machine during the run (sampled before "
        "each trial): "
        + ("none." if not distinct else f"{len(distinct)}: " + "; ".join(distinct[:8]) + "."),
    ]
    return "\n".join(lines) + "\n"


def write_docs(section: str) -> None:
    """Replace the text between the markers of docs/benchmarks.md (after the isolation section
    if they are absent)."""
    write_section(DOCS, section, START_MARK, END_MARK, after=AFTER_MARK)


# ----------------------------------------------------------------------------------------- main
async def main(args: argparse.Namespace) -> None:
    """Run every round and trial, then print (and write) the report."""
    settings = settings_from_env()
    if args.wait_quiet:
        still = await wait_quiet(args.wait_quiet * 60, WORKDIR)
        if still:
            print(f"still running after {args.wait_quiet} min: {still}", flush=True)
    if not args.keep_temporal:
        print("Temporal: restarting on a fresh database", flush=True)
        await fresh_temporal(settings)
    start_mb = temporal_db_mb(settings)
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    workdir = settings.stack_dir / WORKDIR
    workdir.mkdir(parents=True, exist_ok=True)
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    dests = case(args.seconds, args.bulk_records)
    modes: list[Mode] = ["per_record", "batch"] if args.mode == "both" else [args.mode]
    setups = [Setup("processes"), Setup("run"), *(Setup("processes", d.short) for d in dests)]
    plan = [(mode, setup) for mode in modes for setup in setups]
    others: list[str] = []
    rounds: Rounds = []
    for round_ in range(args.rounds):
        done: dict[tuple[Mode, Setup], FanTrial] = {}
        for mode, setup in plan if round_ % 2 == 0 else reversed(plan):
            others += others_running(WORKDIR)
            trial = await fan_out_trial(client, settings, workdir, mode, setup, dests)
            done[(mode, setup)] = trial
            print(f"round {round_ + 1}, {trial.summary()}", flush=True)
            await asyncio.sleep(SETTLE_S)
        rounds.append({key: done[key] for key in plan if key in done})  # the plan's order
    section = render(
        args,
        rounds,
        dests,
        modes,
        others,
        (start_mb, temporal_db_mb(settings)),
        started,
        time.monotonic() - t0,
    )
    print()
    print(section)
    if not args.no_docs:
        write_docs(section)
        print(f"written to {DOCS}")


def cli() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="Rounds (default 3).")
    parser.add_argument(
        "--seconds",
        type=float,
        default=15.0,
        help="Seconds of records at its limit per throttled destination (default 15).",
    )
    parser.add_argument(
        "--bulk-records", type=int, default=1500, help="Records of the bulk destination (1500)."
    )
    parser.add_argument("--mode", choices=["per_record", "batch", "both"], default="both")
    parser.add_argument(
        "--keep-temporal",
        action="store_true",
        help="Keep the Temporal database (default: restart the stack's Temporal on a fresh one; "
        "only where nothing else uses that stack).",
    )
    parser.add_argument("--no-docs", action="store_true", help="Do not write docs/benchmarks.md.")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="MIN",
        help="First wait up to MIN minutes until no other pytest runs (default: do not wait).",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.bulk_records < 1:
        parser.error("--rounds, --seconds and --bulk-records must be positive")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
