"""``courier setup``: register Courier's search attributes in the Temporal namespace."""

from __future__ import annotations

from courier.cli.common import (
    DEFAULT_CONFIG_PATH,
    OUT,
    ConfigOption,
    load,
    setup_logging,
    with_client,
)


def setup(config: ConfigOption = DEFAULT_CONFIG_PATH) -> None:
    """Register Courier's search attributes in the Temporal namespace (idempotent)."""
    # lazy: ops.setup (Temporal's SDK and the config models) takes ~0.4 s to import
    from courier.ops import setup as ops

    setup_logging("WARNING")
    cfg = load(config)
    with_client(cfg, lambda client: ops.command(client, cfg, OUT))
