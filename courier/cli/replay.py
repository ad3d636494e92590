"""``courier replay`` and ``courier skip``: export failed records again, or give one up."""

from __future__ import annotations

from typing import Annotated

import typer

from courier.cli.common import (
    DEFAULT_CONFIG_PATH,
    OUT,
    ConfigOption,
    SinceOption,
    check_destination,
    load,
    parse_since,
    setup_logging,
    with_client,
)


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
) -> None:
    """Export failed records again: reset each failed export run and retry each blocked key
    (fix the cause first).

    Takes the filters of `courier failures`, shows what it will replay and asks first.
    """
    # lazy: ops.replay (Temporal's SDK and the config models) takes ~0.5 s to import
    from courier.ops import replay as ops

    setup_logging("WARNING")
    cfg = load(config)
    if destination is not None:
        check_destination(cfg, destination)
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
            confirm=None if yes else typer.confirm,
            out=OUT,
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
