"""``courier stack``: start, stop and inspect the local stack (Kafka, Temporal, PostgreSQL and a
schema registry)."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from courier_devtools import stack

stack_app = typer.Typer(
    help=(
        "Run the local stack (Kafka 4.4 broker, Temporal dev server with UI, PostgreSQL, a schema "
        "registry) as plain processes under .stack/. Ports: COURIER_KAFKA_PORT, "
        "COURIER_KAFKA_CONTROLLER_PORT, COURIER_TEMPORAL_PORT, COURIER_TEMPORAL_UI_PORT, "
        "COURIER_POSTGRES_PORT, COURIER_SCHEMA_REGISTRY_PORT."
    ),
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)


class Service(StrEnum):
    """A service of the local stack."""

    kafka = "kafka"
    temporal = "temporal"
    postgres = "postgres"
    schema_registry = "schema-registry"


def _fail(err: stack.StackError) -> None:
    err_console.print(f"[red]error:[/red] {err}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(1)


def _settings() -> stack.StackSettings:
    try:
        return stack.settings_from_env()
    except stack.StackError as err:
        _fail(err)
        raise  # unreachable


@stack_app.command()
def start(
    services: Annotated[
        list[Service] | None,
        typer.Argument(help="Services to start (default: all three).", show_default=False),
    ] = None,
) -> None:
    """Start the stack and wait until every service answers; a no-op for services already up.

    The first run fetches the Kafka jars with Maven and initialises the data under .stack/;
    later runs reuse them. A stale pid file left by a crash is cleaned up. If a service fails,
    the services this command started are stopped again and the end of its log is shown.
    """
    settings = _settings()
    names = [s.value for s in services] if services else None
    t0 = time.monotonic()
    try:
        with console.status("starting the stack…"):
            result = stack.start(
                names,
                settings=settings,
                echo=lambda msg: console.print(f"[dim]{msg}[/dim]", highlight=False),
                summary=False,
            )
    except stack.StackError as err:
        _fail(err)
        return
    table = Table(title=f"Courier local stack ({time.monotonic() - t0:.1f}s)", title_justify="left")
    table.add_column("service")
    table.add_column("state")
    table.add_column("listens on", overflow="fold")
    for st in stack.status(names, settings=settings, probe=False):
        state = "started" if st.name in result.started else "already running"
        table.add_row(st.name, f"[green]{state}[/green]", st.listen)
    console.print(table)
    console.print(
        f"Temporal UI: [link={settings.temporal_ui_url}]{settings.temporal_ui_url}[/link]"
    )


@stack_app.command()
def stop(
    services: Annotated[
        list[Service] | None,
        typer.Argument(help="Services to stop (default: all three).", show_default=False),
    ] = None,
) -> None:
    """Stop the stack's processes by PID (SIGTERM, or SIGINT for PostgreSQL; SIGKILL on timeout).

    Data under .stack/ is kept, so the next start is a warm start.
    """
    names = [s.value for s in services] if services else None
    try:
        stopped = stack.stop(
            names, settings=_settings(), echo=lambda m: console.print(f"[dim]{m}[/dim]")
        )
    except stack.StackError as err:
        _fail(err)
        return
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack_app.command()
def status(
    probe: Annotated[
        bool, typer.Option(help="Also check that each running service answers.")
    ] = True,
) -> None:
    """Show each service: running or stopped, PID, port, memory (RSS in MB) and health."""
    settings = _settings()
    table = Table(title="Courier local stack", title_justify="left")
    for col in ("service", "state", "pid", "port", "RSS MB", "healthy", "listens on"):
        table.add_column(
            col, justify="right" if col in ("pid", "port", "RSS MB") else "left", overflow="fold"
        )
    for st in stack.status(settings=settings, probe=probe):
        state = "[green]running[/green]" if st.running else "[dim]stopped[/dim]"
        healthy = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[st.healthy]
        table.add_row(
            st.name,
            state,
            str(st.pid or "-"),
            str(st.port),
            f"{st.rss_mb:.0f}" if st.rss_mb is not None else "-",
            healthy,
            st.listen,
        )
    console.print(table)
    console.print(f"Temporal UI: {settings.temporal_ui_url}   data: {settings.stack_dir}")


@stack_app.command()
def logs(
    service: Annotated[Service, typer.Argument(help="Whose log to show.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C stops).")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", help="How many of the last lines to show.")
    ] = 50,
) -> None:
    """Print the end of a service's log (.stack/logs/SERVICE.log), optionally following it."""
    settings = _settings()
    console.print(f"[dim]==> {stack.log_path(service.value, settings=settings)} <==[/dim]")
    try:
        stack.logs(
            service.value,
            follow=follow,
            lines=lines,
            settings=settings,
            echo=lambda line: console.out(line, highlight=False),
        )
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    stack_app()
