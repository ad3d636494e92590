"""``courier codec-server``: the Temporal UI's codec endpoint, with the config's keys."""

from __future__ import annotations

from typing import Annotated

import typer

from courier.cli.common import (
    DEFAULT_CONFIG_PATH,
    OUT,
    ConfigOption,
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    finish,
    load,
    setup_logging,
)

DEFAULT_UI_ORIGINS = ["http://127.0.0.1:8233", "http://localhost:8233"]
"""The local Temporal UI (``courier stack``), allowed to call when --ui-origin is not given."""


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
    # lazy: ops.codec_server (aiohttp, Temporal's SDK, the config models): ~0.7 s to import
    from courier.ops import codec_server as ops

    setup_logging(log_level.value, log_format)
    cfg = load(config)
    origins = ui_origin or DEFAULT_UI_ORIGINS
    finish(ops.command(cfg, config, host=host, port=port, origins=origins, out=OUT))
