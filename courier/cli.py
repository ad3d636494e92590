"""The ``courier`` command line."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from enum import StrEnum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from temporalio.client import Client

from activities.base import DestinationConfig
from courier import logs
from courier.config import DEFAULT_CONFIG_PATH, ConfigError, CourierConfig, load_config
from courier.ops.output import Output

app = typer.Typer(
    help="Courier exports Kafka records to many destinations durably: one Temporal workflow "
    "per record, one task queue per destination.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(
    help="Check the config file or print its JSON schema.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
deploy_app = typer.Typer(
    help="Generate deployment manifests from the config file.", no_args_is_help=True
)
app.add_typer(deploy_app, name="deploy")

OUT = Output()
"""Where commands print: results to stdout, one-line errors and warnings to stderr."""

COMMANDS_ENTRY_POINTS = "courier.commands"
"""Entry-point group of extra commands: a typer app (a command group) or a function (a command)."""


def _add_plugin_commands() -> None:
    """Add the commands other packages register, e.g. ``stack`` and ``demo`` from ``devtools``.

    A registration whose package is not installed (the Docker image has no ``devtools``) is
    skipped; any other import error is a bug and propagates.
    """
    for entry in entry_points(group=COMMANDS_ENTRY_POINTS):
        try:
            command = entry.load()
        except ModuleNotFoundError as err:
            if err.name and entry.module.split(".")[0] == err.name.split(".")[0]:
                continue
            raise
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=entry.name)
        else:
            app.command(entry.name)(command)


ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="COURIER_CONFIG",
        help="Courier YAML config file.",
        show_default=True,
    ),
]
MetricsPort = Annotated[
    int | None,
    typer.Option(
        help="Serve Courier's Prometheus metrics on 127.0.0.1:PORT/metrics (liveness /healthz, "
        "readiness /readyz on the same port), and the Temporal SDK's (activity "
        "schedule-to-start latency per task queue, polls, slots) on PORT+1. COURIER_METRICS_HOST "
        "sets the address to bind (e.g. 0.0.0.0 in a container).",
        envvar="COURIER_METRICS_PORT",
    ),
]


class LogFormat(StrEnum):
    """How long-running commands write their logs."""

    text = "text"
    json = "json"


class LogLevel(StrEnum):
    """The least severe level logged."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        help="Log lines as text (for people) or json (one object per line: timestamp, level, "
        "logger, message, and topic, partition, offset, destination where known).",
        envvar="COURIER_LOG_FORMAT",
    ),
]
LogLevelOption = Annotated[
    LogLevel,
    typer.Option(
        "--log-level",
        help="Least severe level logged (libraries log WARNING and above).",
        envvar="COURIER_LOG_LEVEL",
        case_sensitive=False,
    ),
]


def _setup_logging(level: str = "INFO", fmt: LogFormat = LogFormat.text) -> None:
    logs.setup_logging(level, "json" if fmt is LogFormat.json else "text")


def _error(message: str) -> None:
    """Print one ``error:`` line to stderr, exactly as given (no markup, no wrapping)."""
    OUT.error(message)


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print one ``error:`` line; the caller raises the returned exit (code 2: usage)."""
    _error(message)
    return typer.Exit(code)


def _load(path: Path) -> CourierConfig:
    from courier.encryption import EncryptionKeyError

    try:
        cfg = load_config(path)
        if cfg.temporal.encryption is not None:
            cfg.temporal.encryption.materials()  # a bad key is one line now, not a crash later
    except ConfigError as err:
        raise _fail(_config_problem(path, err), 2) from None
    except EncryptionKeyError as err:
        raise _fail(f"{path}: {err}", 2) from None
    return cfg


def _config_problem(path: Path, err: ConfigError) -> str:
    """A config error in one line (its per-field lines joined) and what to do."""
    head, *problems = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    if problems:
        return (
            f"{head}: {'; '.join(problems)}; fix the file (courier config reference describes "
            "every field)"
        )
    if not path.is_file():
        return f"{head}; pass --config FILE or set COURIER_CONFIG"
    return head


def _destination(cfg: CourierConfig, name: str) -> DestinationConfig:
    try:
        return cfg.destination(name)
    except KeyError as err:
        raise _fail(str(err.args[0]), 2) from None


def _with_client(cfg: CourierConfig, command: Callable[[Client], Awaitable[int]]) -> None:
    """Connect to Temporal, run ``command`` with the client and exit with its code.

    An unreachable server is one error line (exit 1).
    """
    from courier.temporal import TemporalUnreachable, connect

    async def go() -> int:
        try:
            client = await connect(cfg.temporal)
        except TemporalUnreachable as err:
            return OUT.fail(str(err))
        return await command(client)

    raise typer.Exit(asyncio.run(go()))


def _run(
    config: CourierConfig,
    *,
    ingest: bool,
    destinations: list[str],
    workflows: bool,
    metrics_port: int | None,
) -> None:
    """Run the chosen parts until SIGINT/SIGTERM, then exit with their code."""
    from courier.service import run_process

    raise typer.Exit(
        asyncio.run(
            run_process(
                config,
                ingest=ingest,
                destinations=destinations,
                workflows=workflows,
                metrics_port=metrics_port,
                out=OUT,
            )
        )
    )


@app.command()
def run(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    metrics_port: MetricsPort = None,
    log_format: LogFormatOption = LogFormat.text,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Run ingest, the workflow worker and every destination's worker in one process (development)."""  # noqa: E501 (typer keeps line breaks)
    _setup_logging(log_level.value, log_format)
    cfg = _load(config)
    _run(
        cfg,
        ingest=True,
        destinations=[d.name for d in cfg.destinations],
        workflows=True,
        metrics_port=metrics_port,
    )


@app.command()
def ingest(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    metrics_port: MetricsPort = None,
    log_format: LogFormatOption = LogFormat.text,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Consume the configured topics and start one workflow per record; commit only handed-off offsets."""  # noqa: E501 (typer keeps line breaks)
    _setup_logging(log_level.value, log_format)
    cfg = _load(config)
    _run(cfg, ingest=True, destinations=[], workflows=False, metrics_port=metrics_port)


@app.command()
def worker(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    destination: Annotated[
        list[str] | None,
        typer.Option(
            "--destination", "-d", help="Serve this destination's task queue (repeatable)."
        ),
    ] = None,
    workflows: Annotated[
        bool, typer.Option("--workflows", help="Run the ExportRecord workflow worker.")
    ] = False,
    all_: Annotated[
        bool, typer.Option("--all", help="Workflows and every destination (development).")
    ] = False,
    metrics_port: MetricsPort = None,
    log_format: LogFormatOption = LogFormat.text,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Run Temporal workers: destinations' activity queues and/or the workflow queue.

    Start several processes with the same --destination to scale it out: the destination's
    rate limit holds across all of them, because the Temporal server enforces it.
    """
    _setup_logging(log_level.value, log_format)
    cfg = _load(config)
    names = [d.name for d in cfg.destinations] if all_ else list(destination or [])
    for name in names:
        _destination(cfg, name)
    if not names and not (workflows or all_):
        raise _fail("nothing to run: choose --destination NAME, --workflows or --all", 2)
    _run(
        cfg,
        ingest=False,
        destinations=names,
        workflows=workflows or all_,
        metrics_port=metrics_port,
    )


@app.command()
def route(
    key: Annotated[str, typer.Argument(help="The record key to route.")],
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    record: Annotated[
        Path | None,
        typer.Option(
            "--record",
            help="A JSON file describing the rest of the record (as for courier map), for "
            "rules with `when`; without it those rules are skipped.",
        ),
    ] = None,
) -> None:
    """Print which destination a key goes to and which rule decided."""
    from courier.ops.route import route

    raise typer.Exit(route(_load(config), key, record, OUT))


@app.command("map")
def map_command(
    destination: Annotated[
        str, typer.Option("--destination", "-d", help="The destination whose mapping to apply.")
    ],
    record: Annotated[
        Path | None,
        typer.Option(
            "--record",
            help='A JSON file describing the record: {"key": "k", "value": {...} or "text", '
            '"headers": {"name": "text"}, "topic": "t", "partition": 0, "offset": 0, '
            '"timestamp_ms": 0}; all optional; key_base64/value_base64 for bytes.',
        ),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", help="Read the record from Kafka at TOPIC/PARTITION/OFFSET instead."
        ),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print exactly what a destination would receive for a record, without sending it.

    REST: method, URL, headers and body; file: the line; PostgreSQL: the row. A mapping that
    fails for the record prints the reason its export would fail with (exit 1).
    """
    from courier.ops.route import map_record

    cfg = _load(config)
    _destination(cfg, destination)
    if (record is None) == (from_ is None):
        raise _fail("give exactly one of --record FILE or --from TOPIC/PARTITION/OFFSET", 2)
    at = None
    if from_ is not None:
        topic, _, rest = from_.rpartition("/")
        topic, _, part = topic.rpartition("/")
        if not (topic and part.isdigit() and rest.isdigit()):
            raise _fail(f"--from {from_!r}: write TOPIC/PARTITION/OFFSET, e.g. orders/0/17", 2)
        _setup_logging("ERROR")
        at = (topic, int(part), int(rest))
    raise typer.Exit(
        asyncio.run(map_record(cfg, destination, record=record, at=at, as_json=as_json, out=OUT))
    )


@app.command()
def status(config: ConfigOption = DEFAULT_CONFIG_PATH) -> None:
    """Show each destination's workers, backlog, live rate limit and workflows by status."""
    from courier.ops.status import command

    _setup_logging("WARNING")
    cfg = _load(config)
    _with_client(cfg, lambda client: command(client, cfg, OUT))


@app.command()
def limit(
    destination: Annotated[str, typer.Argument(help="Destination name.")],
    rate: Annotated[
        str,
        typer.Argument(
            help="Records per second, or 'default' to use the workers' rate_limit again."
        ),
    ],
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    reason: Annotated[
        str, typer.Option(help="Why; stored with the limit.")
    ] = "set with courier limit",
) -> None:
    """Change a destination's rate limit now, for all its workers, without a restart."""
    cfg = _load(config)
    _destination(cfg, destination)
    try:
        value = None if rate == "default" else float(rate)
    except ValueError:
        raise _fail(
            f"rate must be a number of records per second or 'default', not {rate!r}", 2
        ) from None
    if value is not None and value <= 0:
        raise _fail(f"rate must be greater than 0, not {rate}", 2)
    from courier.ops.limits import command

    _with_client(cfg, lambda client: command(client, cfg, destination, value, reason, OUT))


SinceOption = Annotated[
    str | None,
    typer.Option(help="Only exports that failed in this last period, e.g. 30m, 1h, 2h30m."),
]


def _since(value: str | None) -> timedelta | None:
    from courier.durations import parse_duration

    if value is None:
        return None
    try:
        since: timedelta = parse_duration(value)
    except ValueError as err:
        raise _fail(f"--since: {err}", 2) from None
    return since


@app.command()
def failures(
    destination: Annotated[
        str | None, typer.Option("--destination", "-d", help="Only this destination.")
    ] = None,
    since: SinceOption = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the groups as JSON.")] = False,
    config: ConfigOption = DEFAULT_CONFIG_PATH,
) -> None:
    """List failed records grouped by destination and reason: count, first/last seen, example."""
    from courier.ops.failures import command

    _setup_logging("WARNING")
    cfg = _load(config)
    if destination is not None:
        _destination(cfg, destination)
    period = _since(since)
    _with_client(
        cfg,
        lambda client: command(
            client, cfg, destination=destination, since=period, as_json=json_, out=OUT
        ),
    )


@app.command("replay")
def replay_command(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    destination: Annotated[
        str | None,
        typer.Option("--destination", "-d", help="Only this destination's failed exports."),
    ] = None,
    since: SinceOption = None,
    query: Annotated[
        str | None,
        typer.Option(help="Extra visibility filter, e.g. \"CourierTopic = 'orders'\"."),
    ] = None,
    reason: Annotated[
        str, typer.Option(help="Reason recorded on each reset.")
    ] = "replayed with courier replay",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Replay without asking.")] = False,
) -> None:
    """Export failed records again: reset each failed export run and retry each blocked key
    (fix the cause first).

    Takes the filters of `courier failures`, shows what it will replay and asks first.
    """
    _setup_logging("WARNING")
    cfg = _load(config)
    if destination is not None:
        _destination(cfg, destination)
    from courier.ops.replay import command

    period = _since(since)
    _with_client(
        cfg,
        lambda client: command(
            client,
            cfg,
            destination=destination,
            since=period,
            query=query,
            reason=reason,
            confirm=None if yes else typer.confirm,
            out=OUT,
        ),
    )


@app.command("skip")
def skip_command(
    record_id: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="The ID of the record a key is blocked on, as courier status shows it "
            "(courier/<group>/<topic>@<topic ID>/<partition>/<offset>), or the key's "
            "workflow ID (courier/<group>/ordered/<destination>/key=<key>).",
        ),
    ],
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the outcome as one JSON object.")
    ] = False,
) -> None:
    """Skip the record a key of an ordered destination is blocked on; its next records go on.

    The skipped record never reaches the destination (it stays in Kafka). To export it instead, fix the cause and run courier replay.
    """  # noqa: E501 (typer keeps line breaks)
    from courier.ops.skip import command

    _setup_logging("WARNING")
    cfg = _load(config)
    _with_client(cfg, lambda client: command(client, record_id, as_json=json_output, out=OUT))


@app.command()
def redrive(
    destination: Annotated[
        str, typer.Option("--destination", "-d", help="Re-export the records routed here.")
    ],
    from_offset: Annotated[
        list[str] | None,
        typer.Option(
            help="TOPIC:PARTITION:OFFSET to start reading a partition at (repeatable; only "
            "these partitions are read)."
        ),
    ] = None,
    from_time: Annotated[
        str | None,
        typer.Option(help="Start every partition at this time (ISO 8601; no offset means UTC)."),
    ] = None,
    to_time: Annotated[
        str | None,
        typer.Option(help="Stop before records of this time or later (default: the end now)."),
    ] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option(help="With --from-time: topics to read (default: the configured ones)."),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(help="Name of this re-drive; give an earlier run's ID to resume it."),
    ] = None,
    new_idempotency_key: Annotated[
        bool,
        typer.Option(
            "--new-idempotency-key",
            help="Give the records new idempotency keys (their re-drive IDs), so destinations "
            "that deduplicate apply them again. Default: keep each record's own key.",
        ),
    ] = False,
    rate: Annotated[
        float | None,
        typer.Option(help="Start at most this many records/s (default: the destination's limit)."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Read and route only: print the counts and the first records."
        ),
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    config: ConfigOption = DEFAULT_CONFIG_PATH,
) -> None:
    """Export one destination's records again, read from Kafka from an offset or a time.

    Reads with its own consumer (the consumer group is untouched), routes each record with the
    current rules and starts exports for those routed to the destination, under IDs of their
    own (courier/<group>/redrive/<run-id>/...). Resumable: the same --run-id starts nothing twice.
    """
    from courier.ops import redrive as ops

    _setup_logging("WARNING")
    cfg = _load(config)
    _destination(cfg, destination)
    if rate is not None and rate <= 0:
        raise _fail(f"--rate must be greater than 0, not {rate:g}", 2)
    try:
        starts = [ops.Start.parse(s) for s in from_offset or []]
        since = ops.parse_time(from_time) if from_time else None
        until = ops.parse_time(to_time) if to_time else None
        run = run_id or ops.default_run_id()
        from courier.ids import check_run_id

        check_run_id(run)
    except ValueError as err:
        raise _fail(str(err), 2) from None
    if bool(starts) == (since is not None):
        raise _fail("give either --from-offset TOPIC:PARTITION:OFFSET or --from-time TIME", 2)

    _with_client(
        cfg,
        lambda client: ops.command(
            client,
            cfg,
            destination=destination,
            run_id=run,
            starts=starts,
            from_time=since,
            to_time=until,
            topics=topic,
            new_idempotency_key=new_idempotency_key,
            dry_run=dry_run,
            rate=rate,
            as_json=json_,
            out=OUT,
        ),
    )


@app.command()
def show(
    record: Annotated[
        str,
        typer.Argument(help="A workflow ID, or the record as TOPIC/PARTITION/OFFSET."),
    ],
    json_: Annotated[bool, typer.Option("--json", help="Print the journey as JSON.")] = False,
    config: ConfigOption = DEFAULT_CONFIG_PATH,
) -> None:
    """Show one record's journey: the record, its route and why, attempts, receipt, UI link.

    The record is read from its workflow input, or from Kafka when it went by reference.
    """
    from courier.ops.show import command

    _setup_logging("WARNING")
    cfg = _load(config)
    _with_client(cfg, lambda client: command(client, cfg, record, as_json=json_, out=OUT))


@app.command()
def setup(config: ConfigOption = DEFAULT_CONFIG_PATH) -> None:
    """Register Courier's search attributes in the Temporal namespace (idempotent)."""
    from courier.ops.setup import command

    _setup_logging("WARNING")
    cfg = _load(config)
    _with_client(cfg, lambda client: command(client, cfg, OUT))


@config_app.command("check")
def config_check(config: ConfigOption = DEFAULT_CONFIG_PATH) -> None:
    """Validate the config file and summarise its destinations and routes."""
    from courier.ops.config_file import check

    raise typer.Exit(check(_load(config), config, OUT))


@config_app.command("temporal-dynamic-config")
def config_temporal_dynamic_config(config: ConfigOption = DEFAULT_CONFIG_PATH) -> None:
    """Print the Temporal dynamic config (YAML) that makes the destinations' rate limits exact."""
    from courier.ops.dynamic_config import render

    sys.stdout.write(render(_load(config)))


@config_app.command("reference")
def config_reference() -> None:
    """Print the config reference (every field, its type, default and meaning) as Markdown."""
    from courier.config_reference import render

    sys.stdout.write(render() + "\n")


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of the config file (for editors and the config reference)."""
    from courier.ops.config_file import schema

    OUT.write(schema())


@app.command("codec-server")
def codec_server(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    host: Annotated[
        str, typer.Option(help="Address to listen on; only key holders should reach it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8888,
    ui_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="Origin of the Temporal UI allowed to call it from a browser (CORS; "
            "repeatable). Default: http://127.0.0.1:8233 and http://localhost:8233.",
        ),
    ] = None,
    log_format: LogFormatOption = LogFormat.text,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Serve the Temporal UI's codec endpoint (/decode, /encode) with temporal.encryption's keys.

    Point the UI at it (Settings → Codec Server, or the UI server's TEMPORAL_CODEC_ENDPOINT)
    to read encrypted records; the CLI takes it as temporal workflow show --codec-endpoint.
    """
    from courier.ops.codec_server import command

    _setup_logging(log_level.value, log_format)
    cfg = _load(config)
    origins = ui_origin or ["http://127.0.0.1:8233", "http://localhost:8233"]
    raise typer.Exit(
        asyncio.run(command(cfg, config, host=host, port=port, origins=origins, out=OUT))
    )


@deploy_app.command("k8s")
def deploy_k8s(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    partitions: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Partitions of the topics (the smallest count): refuse more ingest replicas.",
        ),
    ] = None,
) -> None:
    """Print Kubernetes manifests (YAML) for this config: ingest, workers, KEDA autoscaling.

    Example: courier deploy k8s -c courier.yaml > courier-k8s.yaml && kubectl apply -f
    courier-k8s.yaml. Secrets stay ${NAME} placeholders read from a Secret; the `kubernetes`
    section of the config sets the image, replicas and scaling.
    """
    from courier.ops.k8s import DeployError, generate

    try:
        source = config.read_text()
    except OSError as err:
        raise _fail(
            f"cannot read config file {config}: {err.strerror}; pass --config FILE", 2
        ) from None
    try:
        manifests = generate(source, partitions=partitions)
    except DeployError as err:
        raise _fail(f"{config}: {err}", 2) from None
    sys.stdout.write(manifests.render(config.name))


_add_plugin_commands()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, then exit without interpreter teardown.

    The Temporal client's native threads can crash a finishing interpreter
    (temporalio/sdk-python#300), so once output is flushed the process leaves with os._exit.
    """
    try:
        app(argv)
        code: object = 0
    except SystemExit as exit_:
        code = exit_.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logs.flush_summaries()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
