"""What the commands share: the --config and log options, loading the config, exiting.

Commands exit by raising ``typer.Exit`` with the code an ops function returned (:func:`finish`,
:func:`with_client`), or with :func:`fail` on a usage error found while parsing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from courier.core import logs
from courier.core.output import Output

if TYPE_CHECKING:
    from datetime import timedelta

    from temporalio.client import Client

    from activities.base import DestinationConfig
    from courier.config.model import ConfigError, CourierConfig

OUT = Output()
"""Where commands print: results to stdout, one-line errors and warnings to stderr."""

DEFAULT_CONFIG_PATH = Path("courier.yaml")
"""The config file read when neither --config nor COURIER_CONFIG names one."""

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="COURIER_CONFIG",
        help="Courier YAML config file.",
        show_default=True,
    ),
]


class LogFormat(StrEnum):
    """How long-running commands write their logs."""

    text = "text"
    json = "json"


class LogLevel(StrEnum):
    """The least severe level logged."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        help="Log lines as text (for people) or json (one object per line: timestamp, level, "
        "logger, message, and topic, partition, offset, destination where known).",
        envvar="COURIER_LOG_FORMAT",
    ),
]
LogLevelOption = Annotated[
    LogLevel,
    typer.Option(
        "--log-level",
        help="Least severe level logged (libraries log WARNING and above).",
        envvar="COURIER_LOG_LEVEL",
        case_sensitive=False,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the result as one JSON object (its shape: docs/cli-json.md); errors and "
        "warnings stay lines on stderr.",
    ),
]
SinceOption = Annotated[
    str | None,
    typer.Option(help="Only exports that failed in this last period, e.g. 30m, 1h, 2h30m."),
]


def setup_logging(level: str = "INFO", fmt: LogFormat = LogFormat.text) -> None:
    """Log at ``level`` and above, as text or JSON lines (see :mod:`courier.core.logs`)."""
    logs.setup_logging(level, "json" if fmt is LogFormat.json else "text")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one ``error:`` line; the caller raises the returned exit (code 2: usage)."""
    OUT.error(message)
    return typer.Exit(code)


def load(path: Path) -> CourierConfig:
    """The config file at ``path``, its keys read; a problem is one error line (exit 2)."""
    # lazy: the config models (pydantic, every destination kind) take ~0.25 s to import
    from courier.config.model import ConfigError, load_config
    from courier.core.encryption import EncryptionKeyError

    try:
        cfg = load_config(path)
        if cfg.temporal.encryption is not None:
            cfg.temporal.encryption.materials()  # a bad key is one line now, not a crash later
    except ConfigError as err:
        raise fail(_config_problem(path, err), 2) from None
    except EncryptionKeyError as err:
        raise fail(f"{path}: {err}", 2) from None
    return cfg


def _config_problem(path: Path, err: ConfigError) -> str:
    """A config error in one line (its per-field lines joined) and what to do."""
    from courier.config.model import config_problem  # lazy: as in load(), which alone calls this

    return config_problem(path, err)


def check_destination(config: CourierConfig, name: str) -> DestinationConfig:
    """The destination called ``name``; an unknown name is one error line (exit 2)."""
    try:
        return config.destination(name)
    except KeyError as err:
        raise fail(str(err.args[0]), 2) from None


def parse_since(value: str | None) -> timedelta | None:
    """The period of ``--since`` (None without it); a bad one is one error line (exit 2)."""
    # lazy: courier.core.durations (pydantic) takes ~35 ms to import
    from courier.core.durations import parse_duration

    if value is None:
        return None
    try:
        period: timedelta = parse_duration(value)
    except ValueError as err:
        raise fail(f"--since: {err}", 2) from None
    return period


def finish(coroutine: Coroutine[Any, Any, int]) -> NoReturn:
    """Run ``coroutine`` to its end and exit with the code it returns."""
    # lazy: asyncio takes ~20 ms to import
    import asyncio

    raise typer.Exit(asyncio.run(coroutine))


def with_client(config: CourierConfig, command: Callable[[Client], Awaitable[int]]) -> NoReturn:
    """Connect to Temporal, run ``command`` with the client and exit with its code.

    An unreachable server is one error line (exit 1).
    """
    # lazy: courier.temporal.client (Temporal's SDK) takes ~0.3 s to import
    from courier.temporal.client import TemporalUnreachable, connect

    async def connected() -> int:
        try:
            client = await connect(config.temporal)
        except TemporalUnreachable as err:
            return OUT.fail(str(err))
        return await command(client)

    finish(connected())
