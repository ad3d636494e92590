"""``courier status``: each destination's workers, backlog, rate limit and workflows."""

from __future__ import annotations

from courier.cli.common import (
    DEFAULT_CONFIG_PATH,
    OUT,
    ConfigOption,
    JsonOption,
    load,
    setup_logging,
    with_client,
)


def status(config: ConfigOption = DEFAULT_CONFIG_PATH, json_: JsonOption = False) -> None:
    """Show each destination's workers, backlog, live rate limit and workflows by status."""
    # lazy: ops.status (Temporal's SDK and the config models) takes ~0.5 s to import
    from courier.ops import status as ops

    setup_logging("WARNING")
    cfg = load(config)
    with_client(cfg, lambda client: ops.command(client, cfg, OUT, as_json=json_))
