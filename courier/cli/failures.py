"""``courier failures``: failed records grouped by destination and reason."""

from __future__ import annotations

from typing import Annotated

import typer

from courier.cli.common import (
    DEFAULT_CONFIG_PATH,
    OUT,
    ConfigOption,
    JsonOption,
    SinceOption,
    check_destination,
    finish,
    load,
    parse_since,
    setup_logging,
    with_client,
)


def failures(
    destination: Annotated[
        str | None, typer.Option("--destination", "-d", help="Only this destination.")
    ] = None,
    since: SinceOption = None,
    json_: JsonOption = False,
    dead_letter: Annotated[
        str | None,
        typer.Option(
            "--dead-letter",
            metavar="TOPIC",
            help="Summarise this dead-letter topic instead (one line per destination and "
            "reason, each record counted once), also failures Temporal has forgotten.",
        ),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG_PATH,
) -> None:
    """List failed records grouped by destination and reason: count, first/last seen, example."""
    setup_logging("WARNING")
    cfg = load(config)
    if destination is not None:
        check_destination(cfg, destination)
    period = parse_since(since)
    if dead_letter is not None:
        # lazy: ops.dead_letters (aiokafka, Temporal's SDK) takes ~0.5 s to import
        from datetime import UTC, datetime

        from courier.ops import dead_letters

        selection = dead_letters.Selection(
            destination=destination, since=datetime.now(UTC) - period if period else None
        )
        finish(
            dead_letters.failures_command(
                cfg, dead_letter, selection=selection, as_json=json_, out=OUT
            )
        )
    # lazy: ops.failures (Temporal's SDK and the config models) takes ~0.5 s to import
    from courier.ops import failures as ops

    with_client(
        cfg,
        lambda client: ops.command(
            client, cfg, destination=destination, since=period, as_json=json_, out=OUT
        ),
    )
