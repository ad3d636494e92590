"""``courier show``: one record's journey, from Kafka to its destination."""

from __future__ import annotations

from typing import Annotated

import typer

from courier.cli.common import (
    DEFAULT_CONFIG_PATH,
    OUT,
    ConfigOption,
    JsonOption,
    load,
    setup_logging,
    with_client,
)


def show(
    record: Annotated[
        str,
        typer.Argument(help="A workflow ID, or the record as TOPIC/PARTITION/OFFSET."),
    ],
    json_: JsonOption = False,
    config: ConfigOption = DEFAULT_CONFIG_PATH,
) -> None:
    """Show one record's journey: the record, its route and why, attempts, receipt, UI link.

    The record is read from its workflow input, or from Kafka when it went by reference.
    """
    # lazy: ops.show (Temporal's SDK and the config models) takes ~0.65 s to import
    from courier.ops import show as ops

    setup_logging("WARNING")
    cfg = load(config)
    with_client(cfg, lambda client: ops.command(client, cfg, record, as_json=json_, out=OUT))
