"""The end-to-end demo behind ``make demo`` / ``courier demo``.

It starts the local stack (if needed), a fresh topic and consumer group, the recording HTTP
receiver and Courier itself in this process; produces records for every destination of
``config/example.yaml``; shows one progress bar per destination, counting the effects actually
seen *at* the destination (receiver requests, archive lines, warehouse rows); and ends with a
table of routed / exported / failed records, the throttled destination's observed rate and a
Temporal UI link to this run's workflows.

Everything is filtered to this run: REST effects and archive lines by their idempotency key
(the workflow ID, which names group and topic), warehouse rows by topic.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import asyncpg
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import Client, WorkflowHandle

from activities.files import FileConfig
from activities.postgres import PostgresConfig, qualified_table
from activities.rest import RestConfig
from courier.config.model import CourierConfig, load_config
from courier.core.ids import workflow_id
from courier.core.rates import format_rate
from courier_devtools import stack as stack_control
from courier_devtools import topics
from courier_devtools.receiver import Receiver
from courier_devtools.stack.settings import REPO_ROOT, StackSettings
from ingest.routing import Router

if TYPE_CHECKING:
    from ingest.consumer import Ingest

DEFAULT_CONFIG = Path("config/example.yaml")
DEFAULT_RECORDS = 300
DEFAULT_TIMEOUT_S = 180.0
PARTITIONS = 3
REFRESH_S = 0.25
FAILED_POLL_S = 2.0
QUIET_LOGGERS = ("courier", "temporalio", "httpx", "aiokafka")

# Key prefixes of the produced records and their share of them. ``order-`` goes to the
# throttled orders-api (5/s): 20% of 300 records is 60, about 12 s of its rate limit.
# ``note-`` matches no rule and falls to the default route (archive).
KEY_MIX: dict[str, float] = {"order": 0.20, "audit": 0.80 / 3, "event": 0.80 / 3, "note": 0.80 / 3}

log = logging.getLogger("courier_devtools.demo")


# ---------------------------------------------------------------------------------- results
@dataclass
class DestinationResult:
    """What happened to one destination's records in this run."""

    name: str
    kind: str
    routed: int
    exported: int = 0
    duplicates: int = 0
    failed: int = 0
    rate_limit: float | None = None
    observed_rate: float | None = None
    """Effects per second between the first and the last effect (REST destinations)."""

    @property
    def done(self) -> bool:
        """Every routed record is either exported or failed."""
        return self.exported + self.failed >= self.routed


@dataclass
class DemoResult:
    """The outcome of a demo run; :attr:`ok` is the exit status."""

    topic: str
    group: str
    records: int
    destinations: dict[str, DestinationResult]
    ui_link: str
    export_seconds: float = 0.0
    timed_out: bool = False
    interrupted: bool = False
    error: str | None = None
    terminated: int = 0
    """Workflows of this run still running at the end, terminated by the demo."""

    @property
    def ok(self) -> bool:
        """Every routed record was exported once, none failed."""
        return self.error is None and all(
            d.exported == d.routed and d.failed == 0 and d.duplicates == 0
            for d in self.destinations.values()
        )


# --------------------------------------------------------------------------------- records
def demo_keys(records: int) -> list[str]:
    """``records`` keys (``order-<i>``, ``audit-<i>``, ...) in the :data:`KEY_MIX`, interleaved."""
    shares = {k: records * w for k, w in KEY_MIX.items()}
    counts = {k: int(s) for k, s in shares.items()}
    by_remainder = sorted(shares, key=lambda k: shares[k] - counts[k], reverse=True)
    for k in by_remainder[: records - sum(counts.values())]:
        counts[k] += 1
    # Spread each prefix evenly over the sequence so that every destination starts at once.
    slots = sorted(((j + 0.5) / n, prefix) for prefix, n in counts.items() for j in range(n))
    return [f"{prefix}-{i}" for i, (_, prefix) in enumerate(slots)]


def demo_value(key: str, topic: str) -> bytes:
    """A small JSON value that fits the key's kind of record."""
    prefix, _, number = key.partition("-")
    n = int(number)
    body: dict[str, Any] = {"demo": topic, "n": n}
    if prefix == "order":
        body |= {"order_id": f"o-{n:05d}", "amount_cents": 100 + n * 7 % 9000, "currency": "EUR"}
    elif prefix == "audit":
        body |= {"actor": f"user-{n % 17}", "action": ("login", "update", "logout")[n % 3]}
    elif prefix == "event":
        body |= {"event": "page_view", "page": ("/", "/pricing", "/docs")[n % 3]}
    else:
        body |= {"text": f"note number {n}"}
    return json.dumps(body, separators=(",", ":")).encode()


async def produce(config: CourierConfig, topic: str, keys: list[str]) -> dict[str, str]:
    """Produce one record per key; return ``{workflow ID: destination}`` of the records."""
    router = Router(config.routes)
    sent = await topics.produce(
        config.kafka.bootstrap_servers,
        topic,
        [(key.encode(), demo_value(key, topic)) for key in keys],
    )
    topic_id = await topics.topic_id(config.kafka.bootstrap_servers, topic)
    expected: dict[str, str] = {}
    for key, meta in zip(keys, sent, strict=False):
        decision = router.route(key.encode())
        if decision.destination is not None:
            wid = workflow_id(
                group=config.kafka.group,
                topic=topic,
                topic_id=topic_id,
                partition=meta.partition,
                offset=meta.offset,
            )
            expected[wid] = decision.destination
    return expected


# ------------------------------------------------------------------------------ observation
def _rest_path_prefix(url: str) -> str:
    """The fixed path in front of the first ``{placeholder}`` of a REST URL template."""
    return urlsplit(url.split("{", 1)[0]).path or "/"


class _FileTail:
    """Reads a JSON-lines file incrementally, counting this run's idempotency keys."""

    def __init__(self, path: Path, wanted: set[str]) -> None:
        self.path = path
        self.wanted = wanted
        self.lines: collections.Counter[str] = collections.Counter()
        self._offset = 0

    def poll(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # only complete lines
        self._offset += end
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                key = json.loads(line).get("idempotency_key")
                if key in self.wanted:
                    self.lines[key] += 1


class Observer:
    """Counts effects of this run at each destination, as the destination itself shows them."""

    def __init__(
        self,
        config: CourierConfig,
        client: Client,
        receiver: Receiver,
        topic: str,
        expected: dict[str, str],
        results: dict[str, DestinationResult],
    ) -> None:
        self.config = config
        self.client = client
        self.receiver = receiver
        self.topic = topic
        self.expected = expected
        self.results = results
        self._tails: dict[str, _FileTail] = {}
        self._pg: dict[str, asyncpg.Connection] = {}
        self._failed_checked = 0.0

    async def poll(self, *, failed: bool = False) -> None:
        """Refresh every destination's counts (and, every few seconds or if asked, failures)."""
        for dest in self.config.destinations:
            result = self.results[dest.name]
            if result.routed == 0:
                continue
            if isinstance(dest, RestConfig):
                self._poll_rest(dest, result)
            elif isinstance(dest, FileConfig):
                self._poll_file(dest, result)
            elif isinstance(dest, PostgresConfig):
                await self._poll_postgres(dest, result)
            else:
                result.exported = await self._count(dest.name, "Completed")
        now = time.monotonic()
        if failed or now - self._failed_checked >= FAILED_POLL_S:
            self._failed_checked = now
            await self._poll_failed(force=failed)

    def _poll_rest(self, dest: RestConfig, result: DestinationResult) -> None:
        prefix = _rest_path_prefix(dest.url)
        mine = [
            r
            for r in self.receiver.requests
            if r.path.startswith(prefix) and self.expected.get(r.idempotency_key or "") == dest.name
        ]
        effects = [r for r in mine if r.had_effect]
        result.exported = len(effects)
        result.duplicates = sum(1 for r in mine if r.duplicate)
        if len(effects) >= 2:
            span = effects[-1].time - effects[0].time
            result.observed_rate = (len(effects) - 1) / span if span > 0 else None

    def _poll_file(self, dest: FileConfig, result: DestinationResult) -> None:
        tail = self._tails.get(dest.name)
        if tail is None:
            wanted = {wid for wid, name in self.expected.items() if name == dest.name}
            tail = self._tails[dest.name] = _FileTail(dest.path, wanted)
        tail.poll()
        result.exported = len(tail.lines)
        result.duplicates = sum(tail.lines.values()) - len(tail.lines)

    async def _poll_postgres(self, dest: PostgresConfig, result: DestinationResult) -> None:
        conn = self._pg.get(dest.name)
        try:
            if conn is None:
                conn = self._pg[dest.name] = await asyncpg.connect(dest.dsn, timeout=5)
            if dest.columns is None:
                result.exported = await conn.fetchval(
                    f"SELECT count(*) FROM {qualified_table(dest.table)} WHERE topic = $1",
                    self.topic,
                )
            else:  # a mapped table: its rows are told apart by their idempotency keys
                result.exported = await conn.fetchval(
                    f"SELECT count(*) FROM {qualified_table(dest.table)} "
                    "WHERE idempotency_key = ANY($1::text[])",
                    [wid for wid, name in self.expected.items() if name == dest.name],
                )
        except asyncpg.UndefinedTableError:
            result.exported = 0  # the worker has not created it yet
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.warning("cannot count rows of %s: %s", dest.name, err)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            self._pg.pop(dest.name, None)

    async def _poll_failed(self, *, force: bool) -> None:
        if not force and not await self._count(None, "Failed"):
            return
        for name, result in self.results.items():
            if result.routed:
                result.failed = await self._count(name, "Failed")

    async def _count(self, destination: str | None, status: str) -> int:
        query = f"CourierTopic = '{self.topic}' AND ExecutionStatus = '{status}'"
        if destination is not None:
            query += f" AND CourierDestination = '{destination}'"
        return (await self.client.count_workflows(query)).count

    async def close(self) -> None:
        """Close the database connections."""
        for conn in self._pg.values():
            with contextlib.suppress(Exception):
                await conn.close()
        self._pg.clear()


async def terminate_unfinished(client: Client, topic: str) -> int:
    """Terminate this run's still-running workflows; return how many.

    Destination task queues are named after destinations, so a later demo's workers would
    otherwise pick up their activities and spend its orders-api rate budget on them.
    """
    handles = [
        client.get_workflow_handle(wf.id, run_id=wf.run_id)
        async for wf in client.list_workflows(
            f"CourierTopic = '{topic}' AND ExecutionStatus = 'Running'"
        )
    ]
    limit = asyncio.Semaphore(32)

    async def terminate(handle: WorkflowHandle[Any, Any]) -> None:
        async with limit:
            with contextlib.suppress(Exception):  # finished meanwhile
                await handle.terminate(
                    reason="the Courier demo ended before this record was exported"
                )

    await asyncio.gather(*(terminate(h) for h in handles))
    return len(handles)


# ------------------------------------------------------------------------------------ output
def ui_link(settings: StackSettings, namespace: str, topic: str) -> str:
    """Temporal UI list of this topic's workflows."""
    query = quote(f'CourierTopic="{topic}"', safe="")
    return (
        f"{settings.temporal_ui_url}/namespaces/{quote(namespace, safe='')}/workflows?query={query}"
    )


def print_stack(console: Console, start: stack_control.StartResult) -> None:
    """Where the stack's services listen, and whether the demo started them."""
    s = start.settings
    for name, address in (
        ("kafka", s.kafka_bootstrap),
        ("temporal", s.temporal_address),
        ("temporal UI", s.temporal_ui_url),
        ("postgres", s.postgres_dsn),
    ):
        service = name.split()[0]
        state = "started by the demo" if service in start.started else "already running"
        console.print(f"  [bold]{name:<12}[/bold]{address}  [dim]({state})[/dim]", soft_wrap=True)


def result_table(result: DemoResult) -> Table:
    """One row per destination: routed, exported, duplicates, failed, observed rate and limit.

    ``exported`` counts effects seen at the destination, ``failed`` Failed workflows in Temporal.
    """
    table = Table(title=f"{result.records} records on topic {result.topic}", box=box.SIMPLE_HEAD)
    table.add_column("destination", no_wrap=True)
    for column in ("routed", "exported", "duplicates", "failed"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("rate / limit", justify="right", no_wrap=True)
    for d in result.destinations.values():
        complete = d.exported == d.routed and d.failed == 0
        limit = format_rate(d.rate_limit)
        observed = f"{d.observed_rate:.2f}/s" if d.observed_rate is not None else "—"
        table.add_row(
            d.name,
            str(d.routed),
            f"[green]{d.exported}[/green]" if complete else f"[red]{d.exported}[/red]",
            f"[red]{d.duplicates}[/red]" if d.duplicates else "0",
            f"[red]{d.failed}[/red]" if d.failed else "0",
            f"{observed} / {limit}",
        )
    return table


def print_result(console: Console, result: DemoResult) -> None:
    """The final table, the throttled destinations' rates, the UI link and the verdict."""
    console.print(result_table(result))
    for d in result.destinations.values():
        if d.rate_limit and d.observed_rate is not None:
            verdict = "held" if d.observed_rate <= d.rate_limit * 1.05 else "[red]exceeded[/red]"
            console.print(
                f"{d.name}: {d.exported} effects at {d.observed_rate:.2f}/s between the first and "
                f"the last one; the {d.rate_limit:g}/s limit {verdict}"
            )
    console.print(
        f"Temporal UI, this run's workflows: [link={result.ui_link}]{result.ui_link}[/link]",
        soft_wrap=True,
    )
    total = sum(d.routed for d in result.destinations.values())
    if result.ok:
        console.print(
            f"[bold green]All {total} records exported exactly once[/bold green] "
            f"in {result.export_seconds:.1f}s."
        )
    else:
        why = result.error or (
            "interrupted"
            if result.interrupted
            else "timed out"
            if result.timed_out
            else "some records failed or were duplicated"
        )
        console.print(f"[bold red]Not everything was exported ({why}).[/bold red]")
        if result.terminated:
            console.print(
                f"Terminated this run's {result.terminated} unfinished workflows "
                "(see the UI link), "
                "so that they do not use the next run's rate budget."
            )


@contextlib.contextmanager
def quiet_loggers(level: int = logging.WARNING) -> Iterator[None]:
    """Raise the pipeline's loggers to ``level`` for the block, then restore them."""
    saved = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, old in saved.items():
            logging.getLogger(name).setLevel(old)


# --------------------------------------------------------------------------------------- run
def demo_config(
    path: Path, settings: StackSettings, receiver_port: int, topic: str
) -> CourierConfig:
    """The example config pointed at this stack and receiver, on this run's topic and group."""
    if not path.exists() and not path.is_absolute() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    environ = dict(os.environ)
    environ.update(
        COURIER_DEMO_RECEIVER_PORT=str(receiver_port),
        COURIER_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        COURIER_TEMPORAL_ADDRESS=settings.temporal_address,
        COURIER_POSTGRES_DSN=settings.postgres_dsn,
    )
    environ.setdefault("COURIER_DEMO_DIR", str(settings.stack_dir / "demo"))
    config = load_config(path, environ=environ)
    kafka = config.kafka.model_copy(
        update={"topics": [topic], "topic_pattern": None, "group": topic}
    )
    return config.model_copy(update={"kafka": kafka})


async def run_demo(
    *,
    config_path: Path = DEFAULT_CONFIG,
    records: int = DEFAULT_RECORDS,
    timeout: float = DEFAULT_TIMEOUT_S,
    keep_stack: bool = False,
    settings: StackSettings | None = None,
    console: Console | None = None,
) -> DemoResult:
    """Run the whole demo (see the module docstring) and return what it observed."""
    from courier.app.service import run_service
    from courier.temporal.client import connect
    from ingest.consumer import Ingest

    console = console or Console()
    settings = settings or stack_control.settings_from_env()
    console.rule("[bold]Courier demo")
    started = await stack_control.start_async(
        settings=settings, echo=lambda m: console.print(f"  {m}")
    )
    try:
        print_stack(console, started)
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
        topic = f"courier-demo-{stamp}"
        async with Receiver() as receiver:
            config = demo_config(config_path, settings, receiver.port, topic)
            await topics.create_topic(config.kafka.bootstrap_servers, topic, PARTITIONS)
            keys = demo_keys(records)
            router = Router(config.routes)
            routed = collections.Counter(router.route(k.encode()).destination for k in keys)
            results = {
                d.name: DestinationResult(
                    d.name, d.kind, routed.get(d.name, 0), rate_limit=d.rate_limit
                )
                for d in config.destinations
            }
            result = DemoResult(
                topic=topic,
                group=config.kafka.group,
                records=records,
                destinations=results,
                ui_link=ui_link(settings, config.temporal.namespace, topic),
            )
            console.print(
                f"  [bold]{'topic':<12}[/bold]{topic} ({PARTITIONS} partitions)", soft_wrap=True
            )
            console.print(f"  [bold]{'group':<12}[/bold]{config.kafka.group}", soft_wrap=True)
            console.print(f"  [bold]{'receiver':<12}[/bold]{receiver.url}", soft_wrap=True)
            console.print(
                f"  [bold]{'records':<12}[/bold]{records}: "
                + ", ".join(f"{d.routed} to {d.name}" for d in results.values()),
                soft_wrap=True,
            )
            client = await connect(config.temporal)
            stop = asyncio.Event()
            ingest = Ingest(config, client)
            service = asyncio.create_task(
                run_service(
                    client,
                    config,
                    ingest=ingest,
                    destinations=[d.name for d in config.destinations],
                    workflows=True,
                    stop=stop,
                )
            )
            observer = Observer(config, client, receiver, topic, {}, results)
            try:
                await _export(
                    console, config, topic, keys, ingest, service, observer, result, timeout
                )
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(service, timeout=60)
                with contextlib.suppress(Exception):
                    await observer.poll(
                        failed=True
                    )  # final counts, after ingest and workers stopped
                await observer.close()
                if not all(d.done for d in results.values()):
                    with contextlib.suppress(Exception):
                        result.terminated = await terminate_unfinished(client, topic)
        print_result(console, result)
        return result
    finally:
        if started.started and not keep_stack:
            console.print(f"stopping the services the demo started: {', '.join(started.started)}")
            await asyncio.to_thread(
                stack_control.stop,
                started.started,
                settings=settings,
                echo=lambda m: console.print(f"  {m}"),
            )


async def _export(
    console: Console,
    config: CourierConfig,
    topic: str,
    keys: list[str],
    ingest: Ingest,
    service: asyncio.Task[None],
    observer: Observer,
    result: DemoResult,
    timeout: float,
) -> None:
    """Produce the records and follow them to their destinations until done or ``timeout``."""
    results = result.destinations
    t0 = time.monotonic()
    observer.expected = await produce(config, topic, keys)
    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    ) as progress:
        handed = progress.add_task("→ Temporal", total=len(keys), note="workflows started")
        notes = {name: f"{r.kind}, {format_rate(r.rate_limit)}" for name, r in results.items()}
        bars = {
            name: progress.add_task(name, total=r.routed, note=notes[name])
            for name, r in results.items()
            if r.routed
        }
        while True:
            await observer.poll()
            handed_off = sum(ingest.counts[k] for k in ("started", "existing", "skipped"))
            progress.update(handed, completed=handed_off)
            for name, task in bars.items():
                r = results[name]
                failed = f", [red]{r.failed} failed[/red]" if r.failed else ""
                progress.update(task, completed=r.exported, note=notes[name] + failed)
            if all(r.done for r in results.values()):
                break
            if service.done():
                result.interrupted = service.exception() is None
                if service.exception() is not None:
                    result.error = f"Courier stopped: {service.exception()!r}"
                break
            if time.monotonic() - t0 > timeout:
                result.timed_out = True
                break
            await asyncio.sleep(REFRESH_S)
    result.export_seconds = time.monotonic() - t0


def main(
    *,
    config_path: Path = DEFAULT_CONFIG,
    records: int = DEFAULT_RECORDS,
    timeout: float = DEFAULT_TIMEOUT_S,
    keep_stack: bool = False,
) -> int:
    """Run the demo from the command line; the exit code is 0 if every record was exported."""
    from courier.config.model import ConfigError
    from courier_devtools.stack import StackError

    console = Console()
    if not logging.getLogger().handlers:
        from rich.logging import RichHandler

        logging.basicConfig(
            level=logging.WARNING,
            format="%(name)s: %(message)s",
            handlers=[RichHandler(console=console, show_path=False)],
        )
    t0 = time.monotonic()
    try:
        with quiet_loggers():
            result = asyncio.run(
                run_demo(
                    config_path=config_path,
                    records=records,
                    timeout=timeout,
                    keep_stack=keep_stack,
                    console=console,
                )
            )
    except (StackError, ConfigError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130
    console.print(f"[dim]demo took {time.monotonic() - t0:.1f}s in all[/dim]")
    return 0 if result.ok else 1
