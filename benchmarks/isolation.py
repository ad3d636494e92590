"""Isolation at saturation: a healthy destination beside a throttled and a down one.

``python -m benchmarks.isolation [--rounds 3] [--records 300] [--mode per_record|batch|both]
[--bound endpoint|machine|both]`` on the running local stack. Courier runs as real processes,
as in production: ``courier ingest``, ``courier worker --workflows`` and one
``courier worker -d NAME`` per destination.
The destinations are REST endpoints of this process's recording receiver
(``courier_devtools.receiver``):

- ``healthy``: unthrottled, answers 200 at once — the one measured;
- ``throttled``: ``rate_limit: 5``, answers 200 at once;
- ``down``: a closed port on 127.0.0.1, so every attempt is refused and retried (its circuit
  should open after 5 attempts in a row).

Each mode runs twice: with the healthy destination bound by its endpoint (it answers after a
delay, with few requests in flight: below what the shared path carries, as beside a production
Temporal cluster) and bound by the machine (it answers at once: the healthy destination takes
what the 2 cores and the dev server give).

Rows (variants), run interleaved within each round, the order reversed every other round:
alone; beside throttled; beside down; beside both — the others' records in a second topic of
the same config, produced before the healthy topic so they have a backlog — and interleaved:
the three destinations' records alternate in one topic. Measured at the receiver: the healthy
destination's throughput = (N − 1) / (its last effect − its first effect), as a ratio to
``alone`` of the same round (min/median/max);
the end-to-end ratio (N / (last effect − first record produced)) is shown too, so a delayed
start is not hidden. Courier's processes start, and answer on ``/readyz``, before the records
are produced: process start-up is not measured, as in production.

Then rate-limit exactness (per-record mode): one destination with ``rate_limit`` 5 (100 records)
or 20 (300 records) alone, each round both, order swapped per round. The destination's worker
starts once all its exports wait in its queue (so the rate limit is measured, not how fast
workflows start): the most effects in any 1-second window, in the first second, and the rate
after the first second over the limit.

Every trial has its own topics, consumer group, workflow task queue and destination names; its
workflows still running at the end (the throttled and down backlogs) are terminated and its
topics deleted. The Markdown report is printed and written into ``docs/benchmarks.md`` between
``<!-- isolation:start -->`` and ``<!-- isolation:end -->`` (``--no-docs`` skips that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from temporalio.client import Client

from benchmarks.common import cpu_between, free_port
from benchmarks.harness import (
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
from courier.core.task_queues import describe
from courier_devtools.receiver import Receiver
from courier_devtools.stack.settings import REPO_ROOT, StackSettings, settings_from_env

PREFIX = "isolation"
"""Names of the trials' topics, groups and workflow task queues start with it."""
WORKDIR = "bench-isolation"
"""The trials' configs and logs, under the stack directory (it marks the trials' processes)."""
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
START_MARK = "<!-- isolation:start -->"
END_MARK = "<!-- isolation:end -->"

Bound = Literal["machine", "endpoint"]
BOUND_TITLES = {
    "machine": "bound by the machine (healthy endpoint answers at once)",
    "endpoint": "bound by the healthy endpoint",
}


@dataclass(frozen=True)
class Endpoint:
    """How the healthy endpoint bounds its destination when ``bound`` is ``endpoint``."""

    answer_s: float
    """Seconds the endpoint takes to answer each request."""
    concurrency: int
    """The destination's ``max_concurrency``: requests in flight."""

    @property
    def ceiling(self) -> float:
        """Records/s the endpoint allows."""
        return self.concurrency / self.answer_s


ENDPOINTS: dict[Mode, Endpoint] = {
    # A third of what per-record mode reaches here: the shared path (ingest, workflow worker,
    # Temporal) keeps headroom, as a production cluster would. Several requests in flight, as
    # a slow endpoint is configured: with one, each export would also wait for its activity's
    # dispatch and completion, and the rate would measure the server's latency.
    "per_record": Endpoint(answer_s=0.5, concurrency=5),
    "batch": Endpoint(answer_s=0.02, concurrency=4),
}
VARIANTS = ("alone", "throttled", "down", "both", "interleaved")
ROW_TITLES = {
    "alone": "1. alone (baseline)",
    "throttled": "2. beside a throttled destination (rate_limit 5, backlog)",
    "down": "3. beside a down destination (connection refused)",
    "both": "4. beside both",
    "interleaved": "5. all three interleaved in one topic",
}
TARGETS = {"throttled": 0.95, "down": 0.95, "both": 0.95, "interleaved": 0.9}
THROTTLED_LIMIT = 5.0
RATE_CASES = ((5.0, 100), (20.0, 300))
FAIRNESS = True


# ------------------------------------------------------------------------------------- results
@dataclass
class Trial:
    """One run of one variant: the healthy destination's effect times (monotonic seconds)."""

    variant: str
    records: int
    produced: float
    """When the first record of the trial was produced."""
    first: float
    last: float
    notes: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds per component, ``produced`` to the last healthy effect (see ``CPU_PARTS``)."""
    busy: float = float("nan")
    """Share of the machine's CPU time busy over the same span (all processes)."""

    @property
    def running_rate(self) -> float:
        """(N − 1) / (last effect − first effect)."""
        return (self.records - 1) / max(self.last - self.first, 1e-9)

    @property
    def end_to_end_rate(self) -> float:
        """N / (last effect − first record produced)."""
        return self.records / (self.last - self.produced)


@dataclass
class RateTrial:
    """One rate-limited destination alone: what its effect times show."""

    mode: Mode
    limit: float
    records: int
    max_window: int
    first_second: int
    max_window_after_first: int
    steady_rate: float


# ------------------------------------------------------------------------------------------ CPU
CPU_PARTS = {
    "ingest": ("ingest",),
    "workflow worker": ("workflow worker",),
    "Temporal server": ("temporal",),
    "Kafka": ("kafka",),
    "healthy's worker": ("healthy's worker",),
    "others' workers": ("throttled's worker", "down's worker"),
    "receiver (this process)": ("harness+in-process",),
}
"""Columns of the CPU table: the ``CpuMeter`` roles each one sums."""


# ----------------------------------------------------------------------------------- isolation
async def isolation_trial(
    client: Client,
    settings: StackSettings,
    workdir: Path,
    mode: Mode,
    bound: Bound,
    variant: str,
    healthy_n: int,
    other_n: int,
) -> Trial:
    """One variant once: Courier until the healthy destination had all its effects."""
    run = Run(client, settings, workdir, PREFIX)
    u = run.unique
    with_throttled = variant in ("throttled", "both", "interleaved")
    with_down = variant in ("down", "both", "interleaved")
    async with Receiver() as receiver:
        healthy = f"healthy-{u}"
        dests = [destination(healthy, f"{receiver.url}/h-{u}/{{key}}", mode)]
        if bound == "endpoint":
            endpoint = ENDPOINTS[mode]
            receiver.script(f"/h-{u}/", delay=endpoint.answer_s)
            dests[0]["max_concurrency"] = endpoint.concurrency
        rules = []
        other_keys: list[str] = []
        if with_throttled:
            dests.append(
                destination(
                    f"throttled-{u}",
                    f"{receiver.url}/t-{u}/{{key}}",
                    mode,
                    rate_limit=THROTTLED_LIMIT,
                )
            )
            rules.append({"prefix": "t-", "destination": f"throttled-{u}"})
        if with_down:
            dests.append(
                destination(f"down-{u}", f"http://127.0.0.1:{free_port()}/d/{{key}}", mode)
            )
            rules.append({"prefix": "d-", "destination": f"down-{u}"})
        healthy_keys = [f"h-{i}" for i in range(healthy_n)]
        main_topic = run.topic("main")
        topics = [main_topic]
        if variant == "interleaved":
            others_keys = [[f"{k}-{i}" for i in range(other_n)] for k in ("t", "d")]
            interleaved = interleave([healthy_keys, *others_keys])
        elif variant != "alone":
            topics.insert(0, run.topic("other"))
            if with_throttled:
                other_keys += [f"t-{i}" for i in range(other_n)]
            if with_down:
                other_keys += [f"d-{i}" for i in range(other_n)]
            if with_throttled and with_down:  # alternate the two in the other topic
                other_keys = [
                    k
                    for pair in zip(other_keys[:other_n], other_keys[other_n:], strict=True)
                    for k in pair
                ]
        config = run.base_config(mode, topics, fairness=FAIRNESS)
        config["destinations"] = dests
        config["routes"] = {"rules": rules, "default": healthy}
        try:
            await run.create_topics(*topics)
            run.write_config(config)
            # Courier runs before the records come, as in production: process start-up is
            # not part of what is measured.
            run.launch()
            await run.ready()
            cpu_before = run.cpu.snapshot()
            produced = time.monotonic()
            bootstrap = settings.kafka_bootstrap
            if variant == "interleaved":
                await produce(bootstrap, main_topic, interleaved)
            else:
                if other_keys:
                    await produce(bootstrap, topics[0], other_keys)
                await produce(bootstrap, main_topic, healthy_keys)
            prefix = f"/h-{u}/"
            wanted = {prefix: healthy_n}
            times = (await wait_effects(receiver, wanted, run, max(300.0, healthy_n / 5)))[prefix]
            used = cpu_between(cpu_before, run.cpu.snapshot())
            trial = Trial(variant, healthy_n, produced, times[0], times[-1])
            trial.cpu = {
                part: sum(used.seconds.get(role) or 0.0 for role in roles)
                for part, roles in CPU_PARTS.items()
            }
            trial.busy = used.machine_busy_pct / 100
            if with_throttled:
                during = [t for t in receiver.times(f"/t-{u}/") if times[0] <= t <= times[-1]]
                span = times[-1] - times[0]
                trial.notes.append(
                    f"throttled: {len(during)} effects while healthy ran"
                    + (f" ({len(during) / span:.1f}/s)" if span > 0 else "")
                )
            if with_down:
                assert run.parsed is not None
                down_queue = run.parsed.destination(f"down-{u}").task_queue
                queue = await describe(client, down_queue)
                opened = queue.rate_limit_source == "override" and (queue.rate_limit or 0) < 1
                trial.notes.append(
                    f"down: circuit {'open' if opened else 'NOT open'} when healthy finished "
                    f"(queue rate {queue.rate_limit}, {queue.rate_limit_source}, "
                    f"backlog {queue.backlog})"
                )
        finally:
            terminated = await run.cleanup()
    if terminated:
        trial.notes.append(f"{terminated} workflows still running terminated")
    return trial


# ---------------------------------------------------------------------------------- rate limits
async def rate_trial(
    client: Client, settings: StackSettings, workdir: Path, mode: Mode, limit: float, records: int
) -> RateTrial:
    """One rate-limited destination alone with a backlog of ``records``."""
    run = Run(client, settings, workdir, PREFIX)
    u = run.unique
    async with Receiver() as receiver:
        name = f"limited-{u}"
        topic = run.topic("rate")
        config = run.base_config(mode, [topic], fairness=FAIRNESS)
        config["destinations"] = [
            destination(name, f"{receiver.url}/l-{u}/{{key}}", mode, rate_limit=limit)
        ]
        config["routes"] = {"default": name}
        try:
            await run.create_topics(topic)
            run.write_config(config)
            await produce(settings.kafka_bootstrap, topic, (f"l-{i}" for i in range(records)))
            # The whole backlog waits in the destination's queue before its worker starts, so
            # the queue's rate limit is measured, not how fast workflows are started.
            run.launch(destinations=False)
            assert run.parsed is not None
            task_queue = run.parsed.destination(name).task_queue
            # Batch mode: an activity carries several records (at least this many activities).
            activities = records // run.parsed.records_per_activity(name)
            deadline = time.monotonic() + 300
            while (await describe(client, task_queue)).backlog < activities:
                run.alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the backlog of {task_queue} never reached {activities}")
                await asyncio.sleep(0.5)
            await asyncio.sleep(SETTLE_S)  # a range's last, partly filled activities
            run.launch_destinations()
            prefix = f"/l-{u}/"
            timeout = records / limit * 3 + 120
            times = (await wait_effects(receiver, {prefix: records}, run, timeout))[prefix]
        finally:
            await run.cleanup()
    start = times[0]
    after = [t for t in times if t >= start + 1.0]
    steady = (len(after) - 1) / (after[-1] - after[0]) if len(after) > 1 else float("nan")
    return RateTrial(
        mode=mode,
        limit=limit,
        records=records,
        max_window=max_in_window(times),
        first_second=sum(1 for t in times if t < start + 1.0),
        max_window_after_first=max_in_window(times, since=start + 1.0),
        steady_rate=steady,
    )


# -------------------------------------------------------------------------------------- report
def render(
    args: argparse.Namespace,
    trials: dict[tuple[Mode, Bound], list[list[Trial]]],
    rates: list[list[RateTrial]],
    others: list[str],
    started: dt.datetime,
    seconds: float,
) -> str:
    """The Markdown section (without the markers)."""
    lines = [
        "## Isolation at saturation",
        "",
        "Generated by `python -m benchmarks.isolation "
        f"--rounds {args.rounds} --records {args.records} --mode {args.mode} "
        f"--bound {args.bound}` "
        f"(`benchmarks/isolation.py`) on {started:%Y-%m-%d %H:%M} UTC; the run took "
        f"{seconds / 60:.1f} min. {machine_line()}",
        "",
    ]
    if others:
        lines += [
            "**Disturbed run**: other test or Courier processes ran on the machine and the shared "
            "stack during it (listed at the end; the fault matrix restarts Kafka and Temporal). "
            "Rerun on a quiet machine before judging the targets.",
            "",
        ]
    lines += [
        "Method:",
        "",
        "- Courier runs as separate real processes, as in production: `courier ingest`, `courier "
        "worker --workflows` and one `courier worker -d NAME` per destination, started and "
        "ready (`/readyz` answers 200) before the trial's records are produced (3-partition "
        "topics), so process start-up is not measured.",
        "- Destinations are REST endpoints of a recording HTTP receiver in the benchmark's "
        "process: *healthy* (no rate limit, 200 at once), *throttled* (`rate_limit: 5`, 200 at "
        "once), *down* (a closed port on 127.0.0.1: connections refused, retried forever "
        "with the default policy, circuit breaker on by default).",
        f"- Healthy records: {args.records} per trial in per-record mode, {args.batch_records} "
        f"in batch mode; each other destination gets {args.other_records} (per-record) / "
        f"{args.batch_other_records} (batch). Rows 2–4: the other destinations' records are in a "
        "second topic of the same config, produced before the healthy topic (the throttled "
        "and down records alternate there); row 5: the three destinations' keys alternate in "
        "one topic.",
        "- **Healthy throughput** = (N − 1) / (last effect − first effect), effects being the "
        "first 2xx answer per Idempotency-Key at the receiver (arrival time). Each variant's "
        "throughput is divided by *alone* of the same round; the five variants run "
        "interleaved in each round, the order reversed every other round; figures are "
        "min / **median** / max over the rounds. *End to end* divides N / (last effect − "
        "first record produced) the same way, so a later first effect shows there.",
        "- After each trial the processes get SIGTERM, workflows still running (the throttled "
        "and down backlogs, the DestinationState workflows) are terminated and the topics "
        "deleted.",
        "",
    ]
    for (mode, bound), rounds in trials.items():
        if not rounds or not rounds[0]:
            continue
        alone = [r[0] for r in rounds]  # every round holds alone first (sorted below)
        lines += [
            f"### {'Per-record mode' if mode == 'per_record' else 'Batch mode'} "
            f"(`ingest.mode: {mode}`), {BOUND_TITLES[bound]}",
            "",
        ]
        if bound == "endpoint":
            endpoint = ENDPOINTS[mode]
            lines += [
                f"The healthy endpoint answers each request after {endpoint.answer_s * 1000:.0f} "
                f"ms and the destination has `max_concurrency: {endpoint.concurrency}`: at most "
                f"{endpoint.ceiling:.0f} records/s, below what this machine's shared path "
                "(ingest, workflow worker, Temporal) carries, as with a production Temporal "
                "cluster and destinations slower than it.",
                "",
            ]
        lines += [
            "| row | healthy records/s | ratio to alone | target | met (median) | ratio end to "
            "end | first record produced → first healthy effect, s |",
            "| --- | ---: | ---: | ---: | :---: | ---: | ---: |",
        ]
        for variant in VARIANTS:
            if variant not in args.variants:
                continue
            row = [next(t for t in r if t.variant == variant) for r in rounds]
            ratios = [t.running_rate / a.running_rate for t, a in zip(row, alone, strict=True)]
            e2e = [t.end_to_end_rate / a.end_to_end_rate for t, a in zip(row, alone, strict=True)]
            target = TARGETS.get(variant)
            held = "" if target is None else met(statistics.median(ratios) >= target)
            lines.append(
                f"| {ROW_TITLES[variant]} | {spread([t.running_rate for t in row], '{:.1f}')} "
                f"| {spread(ratios)} | {'' if target is None else f'≥ {target}'} | {held} "
                f"| {spread(e2e)} | {spread([t.first - t.produced for t in row], '{:.1f}')} |"
            )
        with_down = [t for r in rounds for t in r if t.variant in ("down", "both", "interleaved")]
        opened = sum(1 for t in with_down if any("circuit open" in n for n in t.notes))
        lines += [
            "",
            f"The down destination's circuit was open when the healthy one finished in {opened} "
            f"of {len(with_down)} trials (queue rate override 0.2/s read from the server).",
        ]
        if mode == "batch" and bound == "machine":
            alone_median = statistics.median(t.running_rate for t in alone)
            lines += [
                "",
                "Batch mode: the REST destination gets one request per record, and *alone* "
                f"reaches {alone_median:.0f} records/s: the bound is the one-process Python "
                "receiver (in the benchmark's process, on the same 2 cores), not Courier's "
                "batch path (thousands of records/s to a file). The throttled destination's "
                "activities carry 5 records each (one second of its limit), spaced at 5/s by "
                "its worker.",
            ]
        lines += [
            "",
            "Where the CPU went, from the first record produced to the last healthy effect "
            "(median over the rounds, CPU seconds; *busy*: share of the machine's 2 cores in "
            "use, all processes):",
            "",
            "| row | busy | " + " | ".join(CPU_PARTS) + " | all of these | per healthy record |",
            "| --- | ---: | " + " | ".join("---:" for _ in CPU_PARTS) + " | ---: | ---: |",
        ]
        for variant in VARIANTS:
            if variant not in args.variants:
                continue
            row = [next(t for t in r if t.variant == variant) for r in rounds]
            parts = [statistics.median(t.cpu.get(k, 0.0) for t in row) for k in CPU_PARTS]
            total = statistics.median(sum(t.cpu.values()) for t in row)
            busy = statistics.median(t.busy for t in row)
            lines.append(
                f"| {ROW_TITLES[variant]} | {busy:.0%} | "
                + " | ".join(f"{p:.1f}" for p in parts)
                + f" | {total:.1f} | {total / row[0].records * 1000:.0f} ms |"
            )
        lines += ["", "Per round (ratio to alone; notes):", ""]
        for i, r in enumerate(rounds, 1):
            base = r[0]
            for t in r:
                ratio = t.running_rate / base.running_rate
                note = "; ".join(t.notes)
                lines.append(
                    f"- round {i}, {t.variant}: {t.running_rate:.1f}/s ({ratio:.2f})"
                    + (f"; {note}" if note else "")
                )
        lines.append("")
    if rates:
        lines += [
            "### Rate-limit exactness (destination alone with a backlog)",
            "",
            "The destination's worker starts once every export waits in its queue (ingest and "
            "the workflow worker ran first), so the queue's rate limit is measured rather than "
            "how fast per-record workflows start. In batch mode an export activity carries at "
            "most one second of the limit (5 records at 5/s, 20 at 20/s) and the worker spaces "
            "its records at the rate. "
            "Effect times at the receiver. *Max 1-s window*: most effects in any window "
            "[t, t + 1 s) starting at an effect; *first second*: effects within 1 s of the first; "
            "*steady*: (n − 1) / span of the effects after the first second, over the limit. "
            "Target: steady within [0.97, 1.03] of the limit, no 1-s window above limit + 1.",
            "",
            "| mode | limit | backlog | max 1-s window | first second | max 1-s window after "
            "the first second | steady / limit | steady met | windows met (all / after 1st s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: | :---: |",
        ]
        rate_modes = list(dict.fromkeys(m for m, _ in trials))
        for mode, (limit, records) in [(m, c) for m in rate_modes for c in RATE_CASES]:
            cases = [t for r in rates for t in r if t.limit == limit and t.mode == mode]
            if not cases:
                continue
            ratios = [t.steady_rate / limit for t in cases]
            steady_ok = all(0.97 <= x <= 1.03 for x in ratios)
            all_ok = all(t.max_window <= limit + 1 for t in cases)
            after_ok = all(t.max_window_after_first <= limit + 1 for t in cases)
            lines.append(
                f"| {mode} | {limit:g}/s | {records} "
                f"| {spread([t.max_window for t in cases], '{:.0f}')} "
                f"| {spread([t.first_second for t in cases], '{:.0f}')} "
                f"| {spread([t.max_window_after_first for t in cases], '{:.0f}')} "
                f"| {spread(ratios, '{:.3f}')} | {met(steady_ok)} "
                f"| {met(all_ok)} / {met(after_ok)} |"
            )
        lines += ["", "*met* columns: every round, not only the median.", ""]
    distinct = sorted(set(others))
    lines.append(
        "Other pytest or courier processes seen on the machine during the run (sampled before "
        "each trial): "
        + ("none." if not distinct else f"{len(distinct)}: " + "; ".join(distinct[:8]) + ".")
    )
    return "\n".join(lines) + "\n"


def write_docs(section: str) -> None:
    """Replace the text between the markers of docs/benchmarks.md (append them if absent)."""
    write_section(DOCS, section, START_MARK, END_MARK)


async def main(args: argparse.Namespace) -> None:
    global FAIRNESS
    FAIRNESS = not args.no_fairness
    settings = settings_from_env()
    if args.wait_quiet:
        still = await wait_quiet(args.wait_quiet * 60, WORKDIR)
        if still:
            print(f"still running after {args.wait_quiet} min: {still}", flush=True)
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    workdir = settings.stack_dir / WORKDIR
    workdir.mkdir(parents=True, exist_ok=True)
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    others: list[str] = []
    modes: list[Mode] = ["per_record", "batch"] if args.mode == "both" else [args.mode]
    bounds: list[Bound] = ["endpoint", "machine"] if args.bound == "both" else [args.bound]
    scenarios = [(m, b) for m in modes for b in bounds]
    trials: dict[tuple[Mode, Bound], list[list[Trial]]] = {s: [] for s in scenarios}
    for mode, bound in scenarios:
        healthy_n = args.records if mode == "per_record" else args.batch_records
        other_n = args.other_records if mode == "per_record" else args.batch_other_records
        for round_ in range(args.rounds):
            chosen = [v for v in VARIANTS if v in args.variants]
            order = chosen if round_ % 2 == 0 else list(reversed(chosen))
            done: list[Trial] = []
            for variant in order:
                others += others_running(WORKDIR)
                trial = await isolation_trial(
                    client, settings, workdir, mode, bound, variant, healthy_n, other_n
                )
                done.append(trial)
                print(
                    f"{mode} {bound}-bound round {round_ + 1} {variant}: "
                    f"{trial.running_rate:.1f}/s running, "
                    f"{trial.end_to_end_rate:.1f}/s end to end; {'; '.join(trial.notes)}",
                    flush=True,
                )
                await asyncio.sleep(SETTLE_S)
            done.sort(key=lambda t: VARIANTS.index(t.variant))
            trials[(mode, bound)].append(done)
    rates: list[list[RateTrial]] = []
    if not args.no_rate:
        for round_ in range(args.rounds):
            cases = [(m, limit, n) for m in modes for limit, n in RATE_CASES]
            if round_ % 2:
                cases.reverse()
            done_rates = []
            for mode, limit, records in cases:
                others += others_running(WORKDIR)
                rt = await rate_trial(client, settings, workdir, mode, limit, records)
                done_rates.append(rt)
                print(
                    f"rate round {round_ + 1} {mode} limit {limit:g}: max window "
                    f"{rt.max_window}, first "
                    f"second {rt.first_second}, after {rt.max_window_after_first}, steady "
                    f"{rt.steady_rate:.3f}/s",
                    flush=True,
                )
                await asyncio.sleep(SETTLE_S)
            rates.append(done_rates)
    section = render(args, trials, rates, others, started, time.monotonic() - t0)
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
        "--records", type=int, default=300, help="Healthy records, per-record mode (300)."
    )
    parser.add_argument(
        "--other-records", type=int, default=300, help="Records per other destination (300)."
    )
    parser.add_argument(
        "--batch-records", type=int, default=3000, help="Healthy records, batch mode (3000)."
    )
    parser.add_argument(
        "--batch-other-records",
        type=int,
        default=3000,
        help="Records per other destination, batch mode (3000).",
    )
    parser.add_argument("--mode", choices=["per_record", "batch", "both"], default="per_record")
    parser.add_argument(
        "--bound",
        choices=["endpoint", "machine", "both"],
        default="both",
        help="What bounds the healthy destination: its endpoint (answering in "
        f"{ENDPOINTS['per_record'].answer_s * 1000:.0f} ms per request, "
        f"{ENDPOINTS['per_record'].concurrency} at a time, in "
        f"per-record mode; {ENDPOINTS['batch'].answer_s * 1000:.0f} ms, "
        f"{ENDPOINTS['batch'].concurrency} at a time, in batch mode) or the machine (an "
        "endpoint that answers at once); default both.",
    )
    parser.add_argument(
        "--variants",
        type=lambda text: [v for v in text.split(",") if v],
        default=list(VARIANTS),
        help=f"Comma-separated rows to run, empty for none (default: {','.join(VARIANTS)}).",
    )
    parser.add_argument("--no-rate", action="store_true", help="Skip the rate-limit trials.")
    parser.add_argument(
        "--no-fairness", action="store_true", help="Run ingest with `fairness: false`."
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
    unknown = set(args.variants) - set(VARIANTS)
    if unknown or (args.variants and "alone" not in args.variants):
        parser.error(
            f"--variants: choose among {','.join(VARIANTS)}, alone included (the baseline)"
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
