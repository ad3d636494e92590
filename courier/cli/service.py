"""``courier run``, ``ingest`` and ``worker``: the long-running parts, with options in common."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from courier.cli.common import (
    DEFAULT_CONFIG_PATH,
    OUT,
    ConfigOption,
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    check_destination,
    fail,
    finish,
    load,
    setup_logging,
)

if TYPE_CHECKING:
    from courier.config.model import CourierConfig

MetricsPort = Annotated[
    int | None,
    typer.Option(
        help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics: Courier's and the Temporal "
        "SDK's (activity schedule-to-start latency per task queue, polls, slots), with "
        "liveness /healthz and readiness /readyz on the same port. COURIER_METRICS_HOST sets "
        "the address to bind (e.g. 0.0.0.0 in a container).",
        envvar="COURIER_METRICS_PORT",
    ),
]


@dataclass(frozen=True)
class ServiceOptions:
    """What ``run``, ``ingest`` and ``worker`` share: config file, metrics port, log options."""

    config: Path
    metrics_port: int | None
    log_format: LogFormat
    log_level: LogLevel

    def load(self) -> CourierConfig:
        """Set up logging as asked, then load the config file."""
        setup_logging(self.log_level.value, self.log_format)
        return load(self.config)

    def run(
        self,
        config: CourierConfig,
        *,
        ingest: bool,
        destinations: Sequence[str],
        workflows: bool,
    ) -> NoReturn:
        """Run these parts until SIGINT or SIGTERM, then exit with their code."""
        # lazy: courier.app.service (ingest, workers, Temporal's SDK) takes ~0.65 s to import
        from courier.app.service import run_process

        finish(
            run_process(
                config,
                ingest=ingest,
                destinations=destinations,
                workflows=workflows,
                metrics_port=self.metrics_port,
                out=OUT,
            )
        )


def _options(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    metrics_port: MetricsPort = None,
    log_format: LogFormatOption = LogFormat.text,
    log_level: LogLevelOption = LogLevel.INFO,
) -> ServiceOptions:
    """The shared options as parameters, where typer reads them."""
    return ServiceOptions(config, metrics_port, log_format, log_level)


def service_command(function: Callable[..., None]) -> Callable[..., None]:
    """``function(options, ...)`` as a command taking the shared options besides its own.

    ``--help`` lists --config first, then the command's own options, then the metrics and log
    options.
    """
    shared = list(inspect.signature(_options, eval_str=True).parameters.values())
    own = list(inspect.signature(function, eval_str=True).parameters.values())[1:]
    parameters = [shared[0], *own, *shared[1:]]

    def command(**arguments: Any) -> None:
        options = _options(**{p.name: arguments.pop(p.name) for p in shared})
        function(options, **arguments)

    command.__name__ = command.__qualname__ = function.__name__
    command.__doc__ = function.__doc__
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


@service_command
def run(options: ServiceOptions) -> None:
    """Run ingest, the workflow worker and every destination's worker in one process (development)."""  # noqa: E501 (typer keeps line breaks)
    cfg = options.load()
    options.run(cfg, ingest=True, destinations=[d.name for d in cfg.destinations], workflows=True)


@service_command
def ingest(options: ServiceOptions) -> None:
    """Consume the configured topics and start one workflow per record; commit only handed-off offsets."""  # noqa: E501 (typer keeps line breaks)
    options.run(options.load(), ingest=True, destinations=[], workflows=False)


@service_command
def worker(
    options: ServiceOptions,
    destination: Annotated[
        list[str] | None,
        typer.Option(
            "--destination", "-d", help="Serve this destination's task queue (repeatable)."
        ),
    ] = None,
    workflows: Annotated[
        bool, typer.Option("--workflows", help="Run the ExportRecord workflow worker.")
    ] = False,
    all_: Annotated[
        bool, typer.Option("--all", help="Workflows and every destination (development).")
    ] = False,
) -> None:
    """Run Temporal workers: destinations' activity queues and/or the workflow queue.

    Start several processes with the same --destination to scale it out: the destination's
    rate limit holds across all of them, because the Temporal server enforces it.
    """
    cfg = options.load()
    names = [d.name for d in cfg.destinations] if all_ else list(destination or [])
    for name in names:
        check_destination(cfg, name)
    if not names and not (workflows or all_):
        raise fail("nothing to run: choose --destination NAME, --workflows or --all", 2)
    options.run(cfg, ingest=False, destinations=names, workflows=workflows or all_)
