"""``courier redrive``: export one destination's records again, read from Kafka."""

from __future__ import annotations

from typing import Annotated

import typer

from courier.cli.common import (
    DEFAULT_CONFIG_PATH,
    OUT,
    ConfigOption,
    JsonOption,
    check_destination,
    fail,
    load,
    setup_logging,
    with_client,
)
from courier.core.ids import check_run_id


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
    json_: JsonOption = False,
    config: ConfigOption = DEFAULT_CONFIG_PATH,
) -> None:
    """Export one destination's records again, read from Kafka from an offset or a time.

    Reads with its own consumer (the consumer group is untouched), routes each record with the
    current rules and starts exports for those routed to the destination, under IDs of their
    own (courier/<group>/redrive/<run-id>/...). Resumable: the same --run-id starts nothing twice.
    """
    # lazy: ops.redrive (Temporal's SDK and the config models) takes ~0.5 s to import
    from courier.ops import redrive as ops

    setup_logging("WARNING")
    cfg = load(config)
    check_destination(cfg, destination)
    if rate is not None and rate <= 0:
        raise fail(f"--rate must be greater than 0, not {rate:g}", 2)
    try:
        starts = [ops.Start.parse(s) for s in from_offset or []]
        since = ops.parse_time(from_time) if from_time else None
        until = ops.parse_time(to_time) if to_time else None
        run = run_id or ops.default_run_id()
        check_run_id(run)
    except ValueError as err:
        raise fail(str(err), 2) from None
    if bool(starts) == (since is not None):
        raise fail("give either --from-offset TOPIC:PARTITION:OFFSET or --from-time TIME", 2)
    with_client(
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
