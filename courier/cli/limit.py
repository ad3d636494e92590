"""``courier limit``: change a destination's rate limit now, for all its workers."""

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
    with_client,
)


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
    json_: JsonOption = False,
) -> None:
    """Change a destination's rate limit now, for all its workers, without a restart."""
    # lazy: ops.limits (Temporal's SDK and the config models) takes ~0.5 s to import
    from courier.ops import limits as ops

    cfg = load(config)
    check_destination(cfg, destination)
    try:
        value = None if rate == "default" else float(rate)
    except ValueError:
        raise fail(
            f"rate must be a number of records per second or 'default', not {rate!r}", 2
        ) from None
    if value is not None and value <= 0:
        raise fail(f"rate must be greater than 0, not {rate}", 2)
    with_client(
        cfg, lambda client: ops.command(client, cfg, destination, value, reason, OUT, as_json=json_)
    )
