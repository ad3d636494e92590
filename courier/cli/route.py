"""``courier route`` and ``courier map``: what Courier would do with one record, doing nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from courier.cli.common import (
    DEFAULT_CONFIG_PATH,
    OUT,
    ConfigOption,
    JsonOption,
    check_destination,
    fail,
    finish,
    load,
    setup_logging,
)


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
    json_: JsonOption = False,
) -> None:
    """Print which destination a key goes to and which rule decided (exit 1: none)."""
    # lazy: ops.route (the config models) takes ~0.25 s to import
    from courier.ops import route as ops

    raise typer.Exit(ops.route(load(config), key, record, OUT, as_json=json_))


def map_record(
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
    as_json: JsonOption = False,
) -> None:
    """Print exactly what a destination would receive for a record, without sending it.

    REST: method, URL, headers and body; file: the line; PostgreSQL: the row. A mapping that
    fails for the record prints the reason its export would fail with (exit 1).
    """
    # lazy: ops.route (the config models) takes ~0.25 s to import
    from courier.ops import route as ops

    cfg = load(config)
    check_destination(cfg, destination)
    if (record is None) == (from_ is None):
        raise fail("give exactly one of --record FILE or --from TOPIC/PARTITION/OFFSET", 2)
    at = None
    if from_ is not None:
        topic, _, offset = from_.rpartition("/")
        topic, _, partition = topic.rpartition("/")
        if not (topic and partition.isdigit() and offset.isdigit()):
            raise fail(f"--from {from_!r}: write TOPIC/PARTITION/OFFSET, e.g. orders/0/17", 2)
        setup_logging("ERROR")
        at = (topic, int(partition), int(offset))
    finish(ops.map_record(cfg, destination, record=record, at=at, as_json=as_json, out=OUT))
