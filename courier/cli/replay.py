"""``courier replay`` and ``courier skip``: export failed records again, or give one up."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from courier.cli.common import (
    DEFAULT_CONFIG_PATH,
    OUT,
    ConfigOption,
    JsonOption,
    SinceOption,
    check_destination,
    fail,
    load,
    parse_since,
    setup_logging,
    with_client,
)

if TYPE_CHECKING:
    from courier.config.model import CourierConfig


def replay(
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
    dead_letter: Annotated[
        str | None,
        typer.Option(
            "--dead-letter",
            metavar="TOPIC",
            help="Export again the records of this dead-letter topic, under their own workflow "
            "IDs and idempotency keys (also those Temporal has forgotten).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="With --dead-letter: only records that failed before this (a period ago, e.g. "
            "1h, or an ISO 8601 time); --since then takes a time too."
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            help="With --dead-letter: name of this replay; give an earlier run's ID to resume it."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="With --dead-letter: read and select only; print what would start."
        ),
    ] = False,
    json_: JsonOption = False,
) -> None:
    """Export failed records again: reset each failed export run and retry each blocked key
    (fix the cause first); or, with --dead-letter, start the records of a dead-letter topic again.

    Takes the filters of `courier failures`, shows what it will replay and asks first (with
    --json, on stderr).
    """
    setup_logging("WARNING")
    cfg = load(config)
    confirm = None if yes else _confirm(on_stderr=json_)
    if destination is not None:
        check_destination(cfg, destination)
    if dead_letter is not None:
        if query is not None:
            raise fail("--query does not go with --dead-letter (it filters workflows)", 2)
        _replay_dead_letters(
            cfg, dead_letter, destination, since, until, run_id, dry_run, confirm, json_
        )
    for flag, given in (("--until", until), ("--run-id", run_id), ("--dry-run", dry_run)):
        if given:
            raise fail(f"{flag} goes with --dead-letter TOPIC", 2)
    # lazy: ops.replay (Temporal's SDK and the config models) takes ~0.5 s to import
    from courier.ops import replay as ops

    period = parse_since(since)
    with_client(
        cfg,
        lambda client: ops.command(
            client,
            cfg,
            destination=destination,
            since=period,
            query=query,
            reason=reason,
            confirm=confirm,
            out=OUT,
            as_json=json_,
        ),
    )


def _confirm(*, on_stderr: bool) -> Callable[[str], bool]:
    """Ask the operator yes or no; on stderr when stdout carries JSON."""
    return lambda question: typer.confirm(question, err=on_stderr)


def _replay_dead_letters(
    cfg: CourierConfig,
    topic: str,
    destination: str | None,
    since: str | None,
    until: str | None,
    run_id: str | None,
    dry_run: bool,
    confirm: Callable[[str], bool] | None,
    as_json: bool,
) -> NoReturn:
    """``courier replay --dead-letter TOPIC``: parse its options, run it, exit with its code."""
    # lazy: the ops modules (Temporal's SDK, aiokafka) take ~0.5 s to import
    from courier.core.ids import check_run_id
    from courier.ops import dead_letters as ops
    from courier.ops.redrive import default_run_id

    try:
        selection = ops.Selection(
            destination=destination,
            since=ops.parse_when(since) if since else None,
            until=ops.parse_when(until) if until else None,
        )
        run = check_run_id(run_id or default_run_id())
    except ValueError as err:
        raise fail(str(err), 2) from None
    with_client(
        cfg,
        lambda client: ops.replay_command(
            client,
            cfg,
            topic,
            selection=selection,
            run_id=run,
            dry_run=dry_run,
            confirm=confirm,
            out=OUT,
            as_json=as_json,
        ),
    )


def skip(
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
    # lazy: ops.skip (the config models) takes ~0.25 s to import
    from courier.ops import skip as ops

    setup_logging("WARNING")
    cfg = load(config)
    with_client(cfg, lambda client: ops.command(client, record_id, as_json=json_output, out=OUT))
