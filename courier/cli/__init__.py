"""The ``courier`` command line: one module per command group, each command a thin wrapper.

A command parses its arguments, loads the config (:mod:`courier.cli.common`), calls one
function of :mod:`courier.ops` (or :mod:`courier.app.service`) and prints what it returns or exits
with the code it returns: what is printed, and how, is decided there. The command modules
import ``courier.ops`` inside each command, so ``courier --help`` loads neither Temporal's SDK
nor the config models.

This module puts the command tree together, in the order ``courier --help`` lists it.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Annotated

import typer

from courier.cli import (
    codec_server,
    common,
    config,
    deploy,
    failures,
    limit,
    redrive,
    replay,
    route,
    service,
    setup,
    show,
    status,
)
from courier.core import logs

app = typer.Typer(
    help="Courier exports Kafka records to many destinations durably: one Temporal workflow "
    "per record, one task queue per destination.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(wanted: bool) -> None:
    """``--version``: print ``courier <version>`` from the installed package's metadata, exit."""
    if not wanted:
        return
    try:
        installed = version("courier")
    except PackageNotFoundError:
        raise common.fail(
            "courier's package metadata is missing (run from a source tree?); install it with "
            "pip install ."
        ) from None
    typer.echo(f"courier {installed}")
    raise typer.Exit(0)


@app.callback()
def _options(
    version_: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_print_version,
            is_eager=True,
            help="Print Courier's version and exit.",
        ),
    ] = False,
) -> None:
    """Options of ``courier`` itself, before any command."""


app.add_typer(config.app, name="config")
app.add_typer(deploy.app, name="deploy")
app.command("run")(service.run)
app.command("ingest")(service.ingest)
app.command("worker")(service.worker)
app.command("route")(route.route)
app.command("map")(route.map_record)
app.command("status")(status.status)
app.command("limit")(limit.limit)
app.command("failures")(failures.failures)
app.command("replay")(replay.replay)
app.command("skip")(replay.skip)
app.command("redrive")(redrive.redrive)
app.command("show")(show.show)
app.command("setup")(setup.setup)
app.command("codec-server")(codec_server.codec_server)

COMMANDS_ENTRY_POINTS = "courier.commands"
"""Entry-point group of extra commands: a typer app (a command group) or a function (a command)."""


def _add_plugin_commands() -> None:
    """Add the commands other packages register (``stack`` and ``demo`` from courier_devtools).

    A registration whose package is not installed (the Docker image has no ``courier_devtools``) is
    skipped; any other import error is a bug and propagates.
    """
    for entry in entry_points(group=COMMANDS_ENTRY_POINTS):
        try:
            command = entry.load()
        except ModuleNotFoundError as err:
            if err.name and entry.module.split(".")[0] == err.name.split(".")[0]:
                continue
            raise
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=entry.name)
        else:
            app.command(entry.name)(command)


_add_plugin_commands()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, then exit without interpreter teardown.

    The Temporal client's native threads can crash a finishing interpreter
    (temporalio/sdk-python#300), so once output is flushed the process leaves with os._exit.
    """
    try:
        app(argv)
        code: object = 0
    except SystemExit as exit_:
        code = exit_.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logs.flush_summaries()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0)
