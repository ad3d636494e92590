"""Destinations misbehaving: down, throttling, too slow, refusing Courier's credentials."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from courier.core.task_queues import describe
from courier_devtools.stack.postgres import SECURE_PASSWORD, SECURE_USER, secure_dsn
from courier_devtools.topics import create_topic
from tests.faults.common import (
    assert_clean,
    fill,
    json_records,
    wait_exported,
    wait_until,
    wait_workflows_closed,
)
from tests.faults.ledger import (
    FaultReceiver,
    Ledger,
    PostgresSink,
    RestSink,
    count,
    exported_times,
    tally,
)
from tests.faults.processes import Fleet, config_data, pollers
from tests.faults.report import Row

pytestmark = [pytest.mark.integration, pytest.mark.faults]

STEADY_LIMIT = 5.0
STEADY_RECORDS = 270
"""Enough for the 15 s before the outage and its 30 s at 5/s, with some left after it."""
DOWN_RECORDS = 50
"""Records of the failing destination before the outage, and again during it."""
OUTAGE_S = 30.0
WINDOW_S = 10.0
"""The healthy destination's throughput before the outage is measured over this window."""
PROBE_INTERVAL_S = 5.0
"""The down destination's probe interval once its circuit is open (the default)."""
MAX_PAUSE_S = 5.0
"""The longest the healthy destination may go without an export during the outage: 25 times
its pace (a stall, not a slowdown: how fast it goes is the benchmark's business)."""


@pytest.fixture
async def second_receiver() -> AsyncIterator[FaultReceiver]:
    running = FaultReceiver()
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_destination_down_while_another_flows(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    fleet: Fleet,
    receiver: FaultReceiver,
    second_receiver: FaultReceiver,
    fault_row: Row,
) -> None:
    """One destination's receiver stops (connections refused) for 30 s, then comes back.

    The other destination (rate-limited, so its throughput is known) is served by the same
    worker process; it must keep its pace during the outage. Recovery: from the receiver's
    return until every record of the failed destination is exported.
    """
    steady, down = f"steady-{unique}", f"down-{unique}"
    topic, bootstrap = f"t-{unique}", stack_settings.kafka_bootstrap
    data = config_data(
        stack_settings,
        unique,
        destinations=[
            {
                "name": steady,
                "kind": "rest",
                "url": f"{receiver.url}/steady",
                "rate_limit": STEADY_LIMIT,
            },
            {
                "name": down,
                "kind": "rest",
                "url": f"{second_receiver.url}/down",
                "retry": {"initial_interval": "500ms", "maximum_interval": "5s"},
            },
        ],
        routes={"rules": [{"prefix": "down-", "destination": down}], "default": steady},
    )
    config = fleet.write_config(data)
    await create_topic(bootstrap, topic)
    await asyncio.gather(
        fleet.ingest(config), fleet.workflows(config), fleet.worker(config, steady, down)
    )
    ledger = Ledger("destination-down")
    steady_sink = RestSink(receiver, "/steady", ledger)
    down_sink = RestSink(second_receiver, "/down", ledger)
    # The failing destination's records first: ingest hands them off before the backlog of
    # the rate-limited one, so that the outage can begin early in that backlog.
    await ledger.produce(bootstrap, topic, json_records(DOWN_RECORDS, "down-a"), group="down")
    await ledger.produce(bootstrap, topic, json_records(STEADY_RECORDS, "s"), group="steady")
    steady_ids = ledger.ids("steady")

    async def flowing() -> bool:
        steady_done = (await tally(steady_sink, ledger, steady_ids)).exported
        down_done = (await tally(down_sink, ledger, ledger.ids("down"))).lost == 0
        return steady_done >= 1.5 * WINDOW_S * STEADY_LIMIT and down_done

    await wait_until(
        flowing, timeout=120, what="both destinations flowing", explain=fleet.explain()
    )
    await second_receiver.stop()
    stopped_at = time.monotonic()
    # What the server holds for each queue, every second of the outage.
    queues = [f"courier-dest-{steady}", f"courier-dest-{down}"]
    outage_over = asyncio.Event()
    watching = asyncio.create_task(_queue_limits(temporal_client, queues, outage_over))
    await ledger.produce(bootstrap, topic, json_records(DOWN_RECORDS, "down-b"), group="outage")
    await asyncio.sleep(OUTAGE_S - (time.monotonic() - stopped_at))  # the outage itself
    outage_over.set()
    limits = await watching
    refused = await _refused(second_receiver.port)
    await second_receiver.start()
    back_at = time.monotonic()
    down_ids = set(ledger.sent) - steady_ids
    recovered_at = await wait_exported(down_sink, ledger, fleet, timeout=60, fids=down_ids)
    await wait_exported(steady_sink, ledger, fleet, timeout=120, fids=steady_ids)
    by_status = await wait_workflows_closed(temporal_client, topic, len(ledger), timeout=60)

    times = exported_times(await steady_sink.deliveries())
    before = sum(1 for t in times if stopped_at - WINDOW_S <= t < stopped_at) / WINDOW_S
    during = sum(1 for t in times if stopped_at <= t < back_at) / (back_at - stopped_at)
    # The healthy destination's longest wait for an export during the outage.
    marks = [stopped_at, *(t for t in times if stopped_at < t < back_at), back_at]
    longest_pause = max(b - a for a, b in itertools.pairwise(marks))
    # Exports of the healthy destination per 5 s, from 10 s before the outage.
    series = [
        sum(1 for t in times if start <= t - stopped_at < start + 5)
        for start in range(-10, int(back_at - stopped_at) + 10, 5)
    ]
    counted = count(
        ledger,
        [*await steady_sink.deliveries(), *await down_sink.deliveries()],
        repeats_observable=True,
    )
    fill(
        fault_row,
        "destination-down",
        counted,
        recovery_s=recovered_at - back_at,
        notes=f"healthy destination (limit {STEADY_LIMIT:g}/s, same worker process) "
        f"{before:.1f}/s before, {during:.1f}/s during the {back_at - stopped_at:.0f} s outage "
        f"(longest pause {longest_pause:.1f} s); recovery = receiver back → its records exported",
        steady_before_per_s=round(before, 2),
        steady_during_per_s=round(during, 2),
        steady_longest_pause_s=round(longest_pause, 2),
        steady_per_5s_from_minus_10s=series,
        outage_s=round(back_at - stopped_at, 1),
    )

    assert refused, "the stopped receiver still accepted connections"
    assert times[-1] > back_at, (
        f"the healthy destination ran out of records during the outage (exports per 5 s from "
        f"10 s before it: {series}): the measurement needs more STEADY_RECORDS"
    )
    assert_clean(counted, fleet)
    assert by_status == {"COMPLETED": len(ledger)}, by_status
    # Isolation as facts that hold under any load (the rates before and during are in the row;
    # their ratio is a benchmark's, docs/benchmarks.md): the down destination's circuit opened
    # on its own queue, the healthy queue kept its limit all along, and its exports never
    # stopped (nominally one per 0.2 s).
    steady_limits = {sample[queues[0]] for sample in limits}
    down_limits = {sample[queues[1]] for sample in limits}
    assert steady_limits == {(STEADY_LIMIT, "worker")}, (
        f"the healthy queue's limit changed during the outage: {steady_limits}"
    )
    assert any(
        source == "override" and rate == pytest.approx(1 / PROBE_INTERVAL_S)
        for rate, source in down_limits
    ), f"the down destination's circuit never opened: its queue's limits {down_limits}"
    assert longest_pause <= MAX_PAUSE_S, (
        f"the healthy destination stopped for {longest_pause:.1f}s during the outage; its "
        f"exports per 5 s from 10 s before the outage: {series}"
    )


STORM_RECORDS = 200
STORM_S = 12.0
RETRY_AFTER_S = 3
STORM_RECOVERY_BOUND_S = 90.0


@pytest.mark.timeout(420)
async def test_429_storm_with_retry_after(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    fleet: Fleet,
    receiver: FaultReceiver,
    fault_row: Row,
) -> None:
    """For 12 s from the first request, every request is answered 429 ``Retry-After: 3``.

    No attempt may come sooner than Retry-After after a 429 of its record (the default
    backoff would retry after 1 s, then 2 s); retries queue behind other records and a rate
    Courier lowers on 429s, so most wait longer. Recovery: from the end of the storm until
    every record is exported, within 90 s.
    """
    name, topic = f"api-{unique}", f"t-{unique}"
    bootstrap = stack_settings.kafka_bootstrap
    receiver.script("/busy", then=429, retry_after=str(RETRY_AFTER_S))
    data = config_data(
        stack_settings,
        unique,
        destinations=[{"name": name, "kind": "rest", "url": f"{receiver.url}/busy"}],
        routes={"default": name},
    )
    config = fleet.write_config(data)
    await create_topic(bootstrap, topic)
    await asyncio.gather(fleet.ingest(config), fleet.workflows(config), fleet.worker(config, name))
    ledger = Ledger("429-storm")
    sink = RestSink(receiver, "/busy", ledger)
    await ledger.produce(bootstrap, topic, json_records(STORM_RECORDS))

    async def storm_began() -> bool:
        return bool(receiver.requests)

    began_at = await wait_until(
        storm_began, timeout=60, what="a first request", explain=fleet.explain()
    )
    await asyncio.sleep(STORM_S - (time.monotonic() - began_at))  # the storm itself
    receiver.script("/busy", then=200)
    ended_at = time.monotonic()
    # Wait well past the bound, so that the row shows how long recovery really took.
    done_at = await wait_exported(sink, ledger, fleet, timeout=3 * STORM_RECOVERY_BOUND_S)
    by_status = await wait_workflows_closed(temporal_client, topic, len(ledger), timeout=60)

    throttled = [r for r in receiver.requests if r.status == 429]
    throttled_records = {r.idempotency_key for r in throttled}
    gaps = _gaps_after(receiver, 429)
    counted = await tally(sink, ledger)
    fill(
        fault_row,
        "429-storm",
        counted,
        recovery_s=done_at - ended_at,
        notes=f"{len(throttled)} answers 429 in {STORM_S:g} s to {len(throttled_records)} "
        f"records; waits after a 429 {min(gaps):.1f}–{max(gaps):.1f} s (Retry-After "
        f"{RETRY_AFTER_S} s); recovery = storm over → all exported",
        answers_429=len(throttled),
        records_throttled=len(throttled_records),
        shortest_wait_after_429_s=round(min(gaps), 3),
        longest_wait_after_429_s=round(max(gaps), 3),
    )

    assert_clean(counted, fleet)
    assert by_status == {"COMPLETED": len(ledger)}, by_status
    assert throttled, "no request was answered 429: there was no storm"
    assert done_at - ended_at <= STORM_RECOVERY_BOUND_S, (
        f"every record exported {done_at - ended_at:.0f}s after the storm ended; the worker's "
        f"rate decisions:\n" + "\n".join(fleet.lines("worker", "rate")[-10:])
    )
    assert min(gaps) >= RETRY_AFTER_S - 0.25, (
        f"an attempt came {min(gaps):.2f}s after a 429 with Retry-After {RETRY_AFTER_S}s"
    )


SLOW_RECORDS = 200
ATTEMPT_S = 3.0
SLOW_ANSWER_S = 5.0
SLOW_CONCURRENCY = 32


async def test_slow_destination_hits_attempt_timeout_then_recovers(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    fleet: Fleet,
    receiver: FaultReceiver,
    fault_row: Row,
) -> None:
    """Answers take 5 s, the attempt timeout is 3 s (read_timeout above it); then fast again.

    The slow phase lasts until 32 requests were answered slowly. Each of those attempts timed
    out before its answer, which still had its effect at the receiver: the attempt's retry must
    be a repeated delivery, never a second effect. Recovery: from the receiver answering at
    once again until every record's workflow completed.
    """
    name, topic = f"api-{unique}", f"t-{unique}"
    bootstrap = stack_settings.kafka_bootstrap
    receiver.script("/slow", delay=SLOW_ANSWER_S)
    data = config_data(
        stack_settings,
        unique,
        destinations=[
            {
                "name": name,
                "kind": "rest",
                "url": f"{receiver.url}/slow",
                "read_timeout": "20s",
                "max_concurrency": SLOW_CONCURRENCY,
                "timeouts": {"attempt": f"{ATTEMPT_S:g}s"},
                "retry": {"initial_interval": "1s", "maximum_interval": "4s"},
            }
        ],
        routes={"default": name},
    )
    config = fleet.write_config(data)
    await create_topic(bootstrap, topic)
    await asyncio.gather(fleet.ingest(config), fleet.workflows(config), fleet.worker(config, name))
    ledger = Ledger("attempt-timeout")
    sink = RestSink(receiver, "/slow", ledger)
    await ledger.produce(bootstrap, topic, json_records(SLOW_RECORDS))

    async def slow_answers() -> bool:
        return len(_answered_slowly(receiver, ATTEMPT_S)) >= SLOW_CONCURRENCY

    await wait_until(slow_answers, timeout=120, what="slow answers", explain=fleet.explain())
    receiver.script("/slow", delay=0.0)
    fast_at = time.monotonic()
    done_at = await wait_exported(sink, ledger, fleet, timeout=90)
    by_status = await wait_workflows_closed(temporal_client, topic, len(ledger), timeout=90)
    closed_at = time.monotonic()
    slow = _answered_slowly(receiver, ATTEMPT_S)
    repeated = {d.idempotency_key for d in await sink.deliveries() if d.repeated}
    counted = await tally(sink, ledger)
    fill(
        fault_row,
        "attempt-timeout",
        counted,
        recovery_s=closed_at - fast_at,
        notes=f"answers {SLOW_ANSWER_S:g} s, attempt timeout {ATTEMPT_S:g} s: {len(slow)} "
        "attempts timed out after their request reached the receiver, each retried as a "
        f"repeat; recovery = fast again → all workflows completed (effects after "
        f"{done_at - fast_at:.1f} s)",
        timed_out_attempts=len(slow),
    )

    assert_clean(counted, fleet)
    assert by_status == {"COMPLETED": len(ledger)}, by_status
    assert slow <= repeated, (
        f"timed-out attempts that were not retried as repeats: {sorted(slow - repeated)[:5]}"
    )


PG_RECORDS = 150
REST_RECORDS = 150
OPEN_ATTEMPTS = 3
AUTH_FAILED = "password authentication failed"


async def test_wrong_database_password_at_start(
    stack_settings: Any,
    temporal_client: Client,
    unique: str,
    fleet: Fleet,
    receiver: FaultReceiver,
    fault_row: Row,
) -> None:
    """A worker serving a PostgreSQL destination with a wrong password and a REST one.

    Expected: the worker keeps serving REST; for PostgreSQL it logs one clear line per open
    attempt naming the destination and "password authentication failed" (never the password,
    no traceback), and does not poll its queue, so its records wait in Temporal. Restarted
    with the right password, it exports them. Open attempts are counted where they fail: the
    server logs each failed authentication. Recovery: from the restart until every PostgreSQL
    record is exported.
    """
    api, pg = f"api-{unique}", f"pg-{unique}"
    topic, bootstrap = f"t-{unique}", stack_settings.kafka_bootstrap
    table = f"faults_{unique}"
    wrong = "not-the-password-" + unique
    data = config_data(
        stack_settings,
        unique,
        destinations=[
            {"name": api, "kind": "rest", "url": f"{receiver.url}/c"},
            # The DSN (with its password) comes from the processes' environment.
            {"name": pg, "kind": "postgres", "dsn": "${FAULT_PG_DSN}", "table": table},
        ],
        routes={"rules": [{"prefix": "pg-", "destination": pg}], "default": api},
    )
    config = fleet.write_config(data, environ={"FAULT_PG_DSN": secure_dsn(stack_settings)})
    server_log = Path(stack_settings.stack_dir) / "logs" / "postgres.log"
    secure = await asyncpg.create_pool(secure_dsn(stack_settings), min_size=1, max_size=2)
    try:
        await _password_enforced(stack_settings)
        await create_topic(bootstrap, topic)
        env = {"FAULT_PG_DSN": secure_dsn(stack_settings, wrong)}
        log_start = server_log.stat().st_size
        *_, worker = await asyncio.gather(
            fleet.start("ingest", "ingest", config=config, env=env),
            fleet.start("workflows", "worker", "--workflows", config=config, env=env),
            fleet.start("worker", "worker", "-d", api, "-d", pg, config=config, env=env),
        )
        await fleet.wait_polling(worker, f"courier-dest-{api}")
        ledger = Ledger("wrong-credentials")
        rest_sink = RestSink(receiver, "/c", ledger)
        pg_sink = PostgresSink(secure, table, ledger)
        await ledger.produce(bootstrap, topic, json_records(REST_RECORDS, "a"), group="rest")
        await ledger.produce(bootstrap, topic, json_records(PG_RECORDS, "pg-"), group="pg")
        rest_ids, pg_ids = ledger.ids("rest"), ledger.ids("pg")
        await wait_exported(rest_sink, ledger, fleet, timeout=90, fids=rest_ids)

        def refused() -> int:
            """Failed authentications of the secure role the server logged since the start."""
            with server_log.open("rb") as f:
                f.seek(log_start)
                text = f.read().decode(errors="replace")
            return text.count(f'FATAL:  {AUTH_FAILED} for user "{SECURE_USER}"')

        async def attempts() -> bool:
            return refused() >= OPEN_ATTEMPTS

        await wait_until(
            attempts, timeout=60, what=f"{OPEN_ATTEMPTS} failed opens", explain=fleet.explain()
        )
        pg_pollers = await pollers(temporal_client, f"courier-dest-{pg}")
        waiting = (await tally(pg_sink, ledger, pg_ids)).exported
        alive_with_wrong_password = worker.alive
        await worker.stop()
        opens = refused()
        log = worker.log()
        lines = [line for line in log.splitlines() if AUTH_FAILED in line]

        env = {"FAULT_PG_DSN": secure_dsn(stack_settings, SECURE_PASSWORD)}
        fixed = await fleet.start(
            "worker-fixed", "worker", "-d", api, "-d", pg, config=config, env=env
        )
        fixed_at = time.monotonic()
        done_at = await wait_exported(pg_sink, ledger, fleet, timeout=90, fids=pg_ids)
        by_status = await wait_workflows_closed(temporal_client, topic, len(ledger), timeout=60)
        counted = count(
            ledger,
            [*await rest_sink.deliveries(), *await pg_sink.deliveries()],
            repeats_observable=True,
        )
        fill(
            fault_row,
            "wrong-credentials",
            counted,
            recovery_s=done_at - fixed_at,
            notes=f"REST exported while PostgreSQL refused the password: {opens} failed opens "
            f"at the server, {len(lines)} log lines about them; recovery = worker restarted "
            "with the right password → PostgreSQL records exported",
            failed_opens=opens,
            log_lines=len(lines),
        )

        assert alive_with_wrong_password, f"the worker died:\n{worker.tail()}"
        assert_clean(counted, fleet)
        assert by_status == {"COMPLETED": len(ledger)}, by_status
        assert waiting == 0, "records reached the table with a wrong password"
        assert not pg_pollers, f"the PostgreSQL queue was polled without a connection: {pg_pollers}"
        assert wrong not in log, "the password is in the worker's log"
        assert "Traceback" not in log, f"a traceback instead of one line:\n{log[-3000:]}"
        assert lines and all(pg in line for line in lines), lines
        # Every attempt is accounted for: a line of its own, or counted in the summary of
        # repeats (at most one line per cause per 30 s); an attempt cut short by the shutdown
        # may go unlogged.
        logged = sum(_repeats(line) for line in lines)
        assert opens - 1 <= logged <= opens, (
            f"expected every open attempt logged or summarised: {opens} failed opens at the "
            f"server, {logged} in the worker's log:\n" + "\n".join(lines)
        )
        assert fixed.alive
    finally:
        await secure.execute(f'DROP TABLE IF EXISTS "{table}"')
        await secure.close()


def _repeats(line: str) -> int:
    """Failures one log line stands for: 1, or N for "… (repeated N times in the last 30s)"."""
    summary = re.search(r"\(repeated (\d+) times? in the last", line)
    return int(summary.group(1)) if summary else 1


async def _password_enforced(settings: Any) -> None:
    """The stack's pg_hba rule for the secure role is in force (the stack start applies it)."""
    try:
        conn = await asyncpg.connect(secure_dsn(settings, "certainly-wrong"))
    except asyncpg.InvalidPasswordError:
        return
    await conn.close()
    raise AssertionError(
        "PostgreSQL accepts courier_secure without its password: start the stack with the "
        "current dev/courier_devtools/stack/postgres.py (courier stack start) to add its "
        "pg_hba rule"
    )


async def _queue_limits(
    client: Client, queues: list[str], stop: asyncio.Event, every_s: float = 1.0
) -> list[dict[str, tuple[float | None, str]]]:
    """Each queue's (rate limit, source) as the server reports it, every ``every_s`` until
    ``stop`` is set."""
    samples: list[dict[str, tuple[float | None, str]]] = []
    while not stop.is_set():
        with contextlib.suppress(RPCError):  # a sample missed, not a finding
            states = await asyncio.gather(*(describe(client, q) for q in queues))
            samples.append({s.task_queue: (s.rate_limit, s.rate_limit_source) for s in states})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    return samples


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


def _gaps_after(receiver: FaultReceiver, status: int) -> list[float]:
    """Per record, seconds from each answer with ``status`` to the record's next request."""
    by_key: dict[str | None, list[int]] = defaultdict(list)
    for i, r in enumerate(receiver.requests):
        by_key[r.idempotency_key].append(i)
    gaps = []
    for indexes in by_key.values():
        for a, b in itertools.pairwise(indexes):
            if receiver.requests[a].status == status:
                gaps.append(receiver.requests[b].time - receiver.answered_at[a])
    return gaps


def _answered_slowly(receiver: FaultReceiver, seconds: float) -> set[str]:
    """Records with a request answered 2xx ``seconds`` or more after it arrived."""
    return {
        r.idempotency_key
        for r, answered in zip(receiver.requests, receiver.answered_at, strict=True)
        if r.idempotency_key is not None and 200 <= r.status < 300 and answered - r.time >= seconds
    }
