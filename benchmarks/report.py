"""The suite's output: rich tables on the console, ``docs/benchmarks.md`` and a bar chart PNG."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
from rich.console import Console
from rich.table import Table

from benchmarks.common import CpuUsage, Measurement, Spread
from benchmarks.ingest_memory import MemoryResult

CPU_ROLES = ("harness+in-process", "temporal", "kafka", "postgres", "connect JVM")
SHORT = {"harness+in-process": "in-proc", "postgres": "pg", "connect JVM": "JVM"}
"""Console headers of the CPU columns (the table is wide)."""
IN_PROCESS = CPU_ROLES[0]
CONNECT = "kafka-connect-file"
BATCH = "courier-batch-file-5000"
"""The batch pipeline compared with the others: Courier's default range size, `fsync: never`."""
SMALL_RANGES = "courier-batch-file-500"
"""The same with ranges of 500 records (the default before 5,000)."""
OLD_BATCH_SIZE = "courier-batch-file-5000-bs500"
"""The same with export activities of 500 records (the file kind's default before 5,000)."""


@dataclass
class PipelineResults:
    """All rounds of one pipeline."""

    name: str
    description: str
    runs: list[Measurement] = field(default_factory=list)
    error: str | None = None

    def spread(self, get: Callable[[Measurement], float | None]) -> Spread | None:
        return Spread.of([v for v in (get(m) for m in self.runs) if v is not None])

    def median(self, get: Callable[[Measurement], float | None]) -> float | None:
        values = [v for v in (get(m) for m in self.runs) if v is not None]
        return statistics.median(values) if values else None

    def cpu(self, role: str) -> float | None:
        return self.median(lambda m: m.cpu.seconds.get(role) if m.cpu else None)


@dataclass
class Report:
    """Everything the suite found, ready to print and write."""

    results: list[PipelineResults]
    environment: dict[str, str]
    method: list[str]
    rounds: int
    memory: MemoryResult | None = None
    memory_error: str | None = None
    background: list[CpuUsage] = field(default_factory=list)
    """CPU used while the suite ran nothing, once before each round."""
    problems: list[str] = field(default_factory=list)
    temporal_db: TemporalDb | None = None

    def by_name(self) -> dict[str, PipelineResults]:
        """The pipelines that have at least one run, by name."""
        return {r.name: r for r in self.results if r.runs}


@dataclass(frozen=True)
class TemporalDb:
    """The stack's Temporal database over the run (the SQLite file and its write-ahead log)."""

    start: str
    """How the run's database began (fresh, or kept from before)."""
    start_mb: float
    end_mb: float

    def line(self) -> str:
        return (
            f"Temporal's database: {self.start}; {self.start_mb:,.1f} MB at the start, "
            f"**{self.end_mb:,.1f} MB** at the end (the SQLite file and its write-ahead log, "
            "on disk)."
        )


# ------------------------------------------------------------------------------------ formatting
def _num(value: float | None, spec: str = ",.0f") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return format(value, spec)


def _sig(value: float | None, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits (small per-record figures stay readable)."""
    if value is None or math.isnan(value):
        return "n/a"
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def _spread(spread: Spread | None, spec: str = ",.0f") -> str:
    if spread is None:
        return "n/a"
    return f"{_num(spread.low, spec)} / **{_num(spread.median, spec)}** / {_num(spread.high, spec)}"


def _rounds(n: int) -> str:
    return f"{n} round" if n == 1 else f"{n} rounds"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _cpu_cell(r: PipelineResults, role: str) -> str:
    return _num(r.cpu(role), ".2f")


def _idle(
    usages: Sequence[CpuUsage], get: Callable[[CpuUsage], float | None], spec: str = ".2f"
) -> str:
    values = [v for v in (get(u) for u in usages) if v is not None]
    return _num(statistics.median(values), spec) if values else "n/a"


def _role_of(role: str) -> Callable[[CpuUsage], float | None]:
    return lambda usage: usage.seconds.get(role)


def _cpu_per(r: PipelineResults, role: str, scale: float) -> float | None:
    """Median over rounds of ``role``'s CPU seconds per record, times ``scale``."""

    def per_record(m: Measurement) -> float | None:
        used = m.cpu.seconds.get(role) if m.cpu else None
        return None if used is None else scale * used / m.records

    return r.median(per_record)


def _running(r: PipelineResults | None) -> float | None:
    return None if r is None else r.median(lambda m: m.running_rate)


def connect_ratio(report: Report, r: PipelineResults) -> float | None:
    """A Courier pipeline's median rate once running over Kafka Connect's, in the same run."""
    connect = _running(report.by_name().get(CONNECT))
    mine = _running(r)
    if not r.name.startswith("courier-") or mine is None or not connect:
        return None
    return mine / connect


def _cpu_total_per_k(r: PipelineResults) -> float | None:
    """Median over rounds of all known CPU seconds, per 1,000 records, in ms."""

    def total(m: Measurement) -> float | None:
        if m.cpu is None:
            return None
        known = [v for v in m.cpu.seconds.values() if v is not None]
        return 1000.0 * sum(known) / m.records * 1000.0 if known else None

    return r.median(total)


# --------------------------------------------------------------------------------------- console
GOAL_RATIO = 0.9
"""Per-record Courier should reach this share of the bare Temporal ceiling."""


def per_record_ratio(report: Report) -> str | None:
    """Courier per-record / ceiling: min / median / max of the per-round ratios (paired runs)."""
    by_name = {r.name: r for r in report.results}
    courier, ceiling = by_name.get("courier-per-record-file"), by_name.get("temporal-ceiling")
    if courier is None or ceiling is None:
        return None
    ratios = [a.rate / b.rate for a, b in zip(courier.runs, ceiling.runs, strict=False)]
    spread = Spread.of(ratios)
    if spread is None:
        return None
    return (
        f"courier-per-record-file / temporal-ceiling, per round: {spread.low:.2f} / "
        f"{spread.median:.2f} / {spread.high:.2f} (min / median / max; goal ≥ {GOAL_RATIO})"
    )


def summary(report: Report) -> list[str]:
    """A few ratios of medians, computed from this run (nothing here is written by hand)."""
    by_name = report.by_name()

    def rate(name: str, running: bool = False) -> float | None:
        r = by_name.get(name)
        if r is None:
            return None
        return r.median(lambda m: m.running_rate if running else m.rate)

    lines = []
    big, small = rate(BATCH, True), rate(SMALL_RANGES, True)
    big_e2e, small_e2e = rate(BATCH), rate(SMALL_RANGES)
    if big is not None and small and big_e2e is not None and small_e2e:
        lines.append(
            f"Throughput at `max_records` 5,000 ÷ at 500 (`{BATCH}` ÷ `{SMALL_RANGES}`, "
            f"medians): **{big / small:.3g}×** once running, {big_e2e / small_e2e:.3g}× end to "
            "end."
        )
    pairs = [
        (BATCH, "courier-per-record-file", False, "per-record Courier"),
        (BATCH, "naive-aiokafka-file", False, "the naive consumer"),
        (BATCH, CONNECT, False, "Kafka Connect, JVM start included"),
        (BATCH, CONNECT, True, "Kafka Connect, both once running"),
        (BATCH, "courier-batch-file", False, "`fsync: always` and the same range size"),
        ("courier-batch-postgres", BATCH, False, "the file destination with `fsync: never`"),
        ("courier-batch-postgres", CONNECT, True, "Kafka Connect's file sink, both once running"),
        (BATCH, OLD_BATCH_SIZE, True, "`batch_size: 500` (the previous default), once running"),
    ]
    for a, b, running, label in pairs:
        ra, rb = rate(a, running), rate(b, running)
        if ra is not None and rb is not None and rb > 0:
            lines.append(f"`{a}` runs at **{ra / rb:.3g}×** {label} (`{b}`), medians.")
    ratio = per_record_ratio(report)
    if ratio:
        lines.append(f"Per-record pair, run back to back in each round: {ratio}.")
    return lines


THROUGHPUT_COLUMNS = (
    ("records", "records"),
    ("rounds", "ok"),
    ("records/s once running (min / **median** / max)", "once running"),
    ("records/s end to end (min / **median** / max)", "end to end"),
    ("once running ÷ Connect's (medians)", "÷ Connect"),
    ("start → first effect, s (median)", "start s"),
    ("in-process CPU µs / record", "µs/rec"),
    ("Temporal CPU s / 10k records", "tmp s/10k"),
    ("Temporal history events / record", "ev/rec"),
)
"""The throughput table's columns after the pipeline's name: (Markdown, console) headers."""


def throughput_cells(report: Report, r: PipelineResults) -> list[str]:
    """One pipeline's throughput row after its name (medians in bold, as Markdown)."""
    if not r.runs:
        return ["", "0", *[""] * (len(THROUGHPUT_COLUMNS) - 2)]
    return [
        f"{r.runs[0].records:,}",
        str(len(r.runs)),
        _spread(r.spread(lambda m: m.running_rate)),
        _spread(r.spread(lambda m: m.rate)),
        _sig(connect_ratio(report, r)) if r.name.startswith("courier-") else "",
        _num(r.median(lambda m: m.startup_s), ".2f"),
        _sig(_cpu_per(r, IN_PROCESS, 1e6)),
        _sig(_cpu_per(r, "temporal", 1e4)),
        _sig(r.median(lambda m: m.history.events_per_record if m.history else None)),
    ]


def print_console(report: Report, console: Console) -> None:
    rates = Table(
        title=f"Throughput, records/s (min / median / max of {_rounds(report.rounds)}) and "
        "cost per record (medians)",
        caption="once running: first effect → last effect; start s: consumer start → first "
        "effect (the JVM's start for Connect); µs/rec: this process's CPU per record (Courier's "
        "ingest and workers + the harness); tmp s/10k: Temporal's CPU s per 10,000 records; "
        "ev/rec: Temporal history events per record",
    )
    rates.add_column("pipeline", no_wrap=True)
    for _, header in THROUGHPUT_COLUMNS:
        rates.add_column(header, justify="right", no_wrap=True)
    rates.add_column("note")
    for r in report.results:
        cells = [cell.replace("**", "") for cell in throughput_cells(report, r)]
        note = f"[red]{_first_line(r.error)}[/red]" if r.error else ""
        rates.add_row(r.name, *cells, note)
    console.print(rates)
    for line in summary(report):
        console.print("· " + line.replace("**", "").replace("`", ""))

    cost = Table(
        title="Where the CPU goes (median CPU s per run) and Temporal cost per record",
        caption="in-proc: this process (harness + in-process pipeline); pg: PostgreSQL; "
        "JVM: Kafka Connect; busy: whole machine; actions: est. billable actions",
    )
    for col in (
        "pipeline",
        *(SHORT.get(role, role) for role in CPU_ROLES),
        "busy %",
        "ms/1k rec",
        "events/rec",
        "actions/rec",
    ):
        if col == "pipeline":
            cost.add_column(col, no_wrap=True)
        else:
            cost.add_column(col, justify="right")
    for r in report.results:
        if not r.runs:
            continue
        cost.add_row(
            r.name,
            *(_cpu_cell(r, role) for role in CPU_ROLES),
            _num(r.median(lambda m: m.cpu.machine_busy_pct if m.cpu else None)),
            _num(_cpu_total_per_k(r)),
            _sig(r.median(lambda m: m.history.events_per_record if m.history else None)),
            _sig(r.median(lambda m: m.history.actions_per_record if m.history else None)),
        )
    if report.background:
        idle = report.background
        cost.add_row(
            "(idle: suite runs nothing)",
            *(_idle(idle, _role_of(role)) for role in CPU_ROLES),
            _idle(idle, lambda u: u.machine_busy_pct, ",.0f"),
            "",
            "",
            "",
        )
    console.print(cost)
    if report.temporal_db is not None:
        console.print(report.temporal_db.line().replace("**", ""))
    if report.memory is not None:
        mem = report.memory
        console.print(
            f"memory: courier-batch-file draining a backlog of {mem.records:,} records: "
            f"peak RSS {mem.peak_mb:.0f} MB (baseline {mem.baseline_mb:.0f} MB) — ingest and "
            f"workers in one process; {mem.rate:,.0f} rec/s"
        )
    elif report.memory_error:
        console.print(f"[red]memory run: {report.memory_error}[/red]")
    for problem in report.problems:
        console.print(f"[yellow]{problem}[/yellow]")


# -------------------------------------------------------------------------------------- markdown
def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(report: Report, chart_name: str | None) -> str:
    out = ["# Benchmarks", ""]
    out.append(
        "Generated by `make bench` (`python -m benchmarks`); every figure down to the isolation "
        "section was measured by the run that wrote it. Rerun it to refresh; it keeps the "
        "isolation section (`make bench-isolation`), the seed case (`make bench-fan-out`) and "
        "the other measurements at the end."
    )
    out += ["", "## Machine and versions", ""]
    out.append(_table(["", "value"], [[k, v] for k, v in report.environment.items()], right_from=2))
    out += ["", "## Method", ""]
    method = [*report.method]
    if report.temporal_db is not None:
        method.append(report.temporal_db.line())
    out += [*(f"- {line}" for line in method), ""]

    lines = summary(report)
    if lines:
        out += ["## Summary", "", *(f"- {line}" for line in lines), ""]
    out += ["## Pipelines", ""]
    out.append(
        _table(
            ["pipeline", "what it is"],
            [[f"`{r.name}`", r.description] for r in report.results],
            right_from=2,
        )
    )
    out += ["", "## Throughput", ""]
    if chart_name:
        out += [f"![median records/s per pipeline, min–max bars, log scale]({chart_name})", ""]
    rows = []
    for r in report.results:
        cells = throughput_cells(report, r)
        if not r.runs:
            cells[2] = "failed (see Problems)"
        rows.append([f"`{r.name}`", *cells])
    out.append(_table(["pipeline", *(header for header, _ in THROUGHPUT_COLUMNS)], rows))
    out += [
        "",
        "*Once running*: from the first record's effect to the last one's, (N − 1) / span; "
        "n/a when every line appeared in one write (or for the ceiling, which has no effect "
        "but its workflows' closes). *End to end*: from consumer start (process launch for "
        "Connect) to the last record's effect. *÷ Connect's*: a Courier pipeline's median "
        "rate once running over `kafka-connect-file`'s in the same run. *Start → first "
        "effect* is the JVM and connector start for Connect, and the consumer/worker start "
        "plus the first hand-off for the others. The cost columns are medians over the "
        "rounds of CPU seconds used until the last effect was seen, per record: *in-process* "
        "is this Python process — for a Courier pipeline its ingest and workers **plus** the "
        "harness sharing the process (its polling; nothing subtracted), for the naive loop "
        "the loop, for Connect only the harness (the JVM is apart, below); *Temporal* is the "
        "dev server, which other clients of the stack share. *History events* are the run's "
        "workflows' Temporal history events per record (sampled; below).",
        "",
    ]

    out += ["## Where the CPU goes", ""]
    cpu_rows = []
    for r in report.results:
        if not r.runs:
            continue
        cpu_rows.append(
            [
                f"`{r.name}`",
                _num(r.median(lambda m: m.cpu.wall_s if m.cpu else None), ".1f"),
                *(_cpu_cell(r, role) for role in CPU_ROLES),
                _num(r.median(lambda m: m.cpu.machine_busy_pct if m.cpu else None)),
                _num(_cpu_total_per_k(r)),
            ]
        )
    if report.background:
        idle = report.background
        cpu_rows.append(
            [
                "*idle: the suite runs nothing*",
                _idle(idle, lambda u: u.wall_s, ".1f"),
                *(_idle(idle, _role_of(role)) for role in CPU_ROLES),
                _idle(idle, lambda u: u.machine_busy_pct, ",.0f"),
                "",
            ]
        )
    out.append(
        _table(
            [
                "pipeline",
                "wall s",
                *(f"{role} CPU s" for role in CPU_ROLES),
                "machine busy %",
                "CPU ms / 1k rec",
            ],
            cpu_rows,
        )
    )
    out += [
        "",
        "Medians over the rounds of CPU seconds (user + system) used during the timed interval "
        "(until the last effect was seen). *harness+in-process* is this Python process: the "
        "harness's polling plus whatever pipeline runs in it (the naive consumer, Courier's "
        "ingest and workers, the ceiling's workers; SDK core threads included). Servers' pids "
        "come from the stack's pid files (`.stack/run/*.pid`, checked against their command "
        "lines); PostgreSQL counts the postmaster and its backends. A server restarted during a "
        "run counts as n/a. The servers are shared: their columns include whatever other "
        "clients (tests, other benchmarks) and their own background work (e.g. after the "
        "previous pipeline's workflows) cost meanwhile — the *idle* row, sampled before each "
        "round while the suite runs nothing, shows that level. *Machine busy* is over all "
        "cores, so other load on the machine shows there too. *CPU ms / 1k rec* adds every "
        "known column; for Connect it is dominated by the JVM's start (class loading, plugin "
        "scanning, JIT), which is timed too.",
        "",
    ]

    out += ["## Temporal cost per record", ""]
    hist_rows = []
    for r in report.results:
        stats = [m.history for m in r.runs if m.history is not None]
        if not stats:
            continue
        other = statistics.median(s.other_action_events / s.records for s in stats)
        hist_rows.append(
            [
                f"`{r.name}`",
                _num(statistics.median(s.workflows for s in stats)),
                _num(statistics.median(s.sampled for s in stats)),
                _sig(statistics.median(s.events_per_record for s in stats)),
                _sig(statistics.median(s.actions_per_record for s in stats)),
                _sig(other),
            ]
        )
    if hist_rows:
        out.append(
            _table(
                [
                    "pipeline",
                    "workflows per run",
                    "histories fetched",
                    "history events / record",
                    "est. billable actions / record",
                    "other billable-type events / record",
                ],
                hist_rows,
            )
        )
    else:
        out.append("No Temporal pipeline ran.")
    out += [
        "",
        "The run's workflows are those on its own workflow task queue. Histories are fetched "
        "(all, or an evenly spread sample scaled up to the total) and counted. Estimated "
        "billable actions = workflow starts + activity attempts (one completed one-activity "
        "workflow = 2). Other event types Temporal Cloud bills (timers, signals, markers, "
        "search-attribute upserts, accepted updates) are shown apart, not added.",
        "",
    ]

    out += ["## Ingest memory", ""]
    if report.memory is not None:
        mem = report.memory
        out += [
            f"`courier-batch-file` draining a backlog of {mem.records:,} records produced before "
            f"it started, in a process of its own: peak resident memory (VmHWM) "
            f"**{mem.peak_mb:.0f} MB**, of which {mem.baseline_mb:.0f} MB before Courier started "
            f"(interpreter, imports, Temporal client). It drained at {mem.rate:,.0f} records/s "
            f"({mem.seconds:.1f} s). This is ingest **and** the workflow and destination "
            "workers together (one process, as `courier run` runs them), not ingest alone.",
            "",
        ]
    else:
        out += [f"Not measured: {report.memory_error or 'skipped'}", ""]

    out += ["## Notes", ""]
    for r in report.results:
        notes = sorted({n for m in r.runs for n in m.notes if not n.startswith("exactly")})
        notes += sorted({n for m in r.runs if m.cpu for n in m.cpu.notes})
        if notes:
            out += [f"- `{r.name}`: " + "; ".join(notes)]
    out.append("")
    if report.problems or any(r.error for r in report.results):
        out += ["## Problems", ""]
        for r in report.results:
            if r.error:
                out += [
                    f"- `{r.name}`:",
                    "",
                    "  ```",
                    *(f"  {line}" for line in r.error.strip().splitlines()),
                    "  ```",
                ]
        out += [f"- {p}" for p in report.problems]
        out.append("")
    return "\n".join(out)


KEPT_SECTION = re.compile(r"^<!-- [a-z-]+:start\b", re.MULTILINE)
"""Where the part of docs/benchmarks.md that others write begins: the isolation benchmark's
section (``<!-- isolation:start -->``) and the notes written by hand (``<!-- notes:start``)."""


def kept_sections(previous: str) -> str:
    """What of the previous report a new one keeps: everything from the first kept section on
    (nothing if it has none), to be appended to :func:`markdown`'s output."""
    found = KEPT_SECTION.search(previous)
    return "" if found is None else "\n" + previous[found.start() :]


# ----------------------------------------------------------------------------------------- chart
def chart(report: Report, path: Path) -> bool:
    """Bar chart of median records/s with min–max error bars, log y; False if nothing to draw."""
    labels: list[str] = []
    medians: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    hatches: list[str] = []
    for r in report.results:
        series = [("", r.spread(lambda m: m.rate))]
        if r.name == "kafka-connect-file":
            series.append((" (once running)", r.spread(lambda m: m.running_rate)))
        for suffix, spread in series:
            if spread is None:
                continue
            labels.append(r.name + suffix)
            medians.append(spread.median)
            lows.append(spread.median - spread.low)
            highs.append(spread.high - spread.median)
            hatches.append("//" if suffix else "")
    if not labels:
        return False
    matplotlib.use("Agg")  # files only, no display; before pyplot is imported
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(7.0, 1.25 * len(labels)), 5.0), dpi=120)
    positions = list(range(len(labels)))
    bars = ax.bar(positions, medians, yerr=[lows, highs], capsize=5, color="#4c72b0")
    for bar, hatch in zip(bars, hatches, strict=True):
        if hatch:
            bar.set_hatch(hatch)
            bar.set_facecolor("#9ab3d8")
    for x, value, high in zip(positions, medians, highs, strict=True):
        ax.annotate(
            f"{value:,.0f}",
            (x, value + high),  # above the error bar's cap
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=8,
        )
    ax.set_yscale("log")
    ax.set_ylabel("records/s (log scale)")
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
    ax.set_title(f"Median records/s per pipeline, min–max over {_rounds(report.rounds)}")
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
