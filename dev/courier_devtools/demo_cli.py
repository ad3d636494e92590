"""``courier demo``: the end-to-end demo behind ``make demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    config: Annotated[
        Path,
        typer.Option(
            "--config", "-c", help="Config the demo runs on (its topic and group are replaced)."
        ),
    ] = Path("config/example.yaml"),
    records: Annotated[
        int,
        typer.Option(
            "--records", "-n", min=1, help="Records to produce, spread over every destination."
        ),
    ] = 300,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the exports.")
    ] = 180.0,
    keep_stack: Annotated[
        bool,
        typer.Option("--keep-stack", help="Leave running the stack services the demo started."),
    ] = False,
) -> None:
    """Run the end-to-end demo: start the local stack, produce records to a fresh topic, export
    them with Courier in this process and watch them arrive at each destination. Exits 1 unless
    every record was exported."""
    from courier_devtools.demo import main

    raise typer.Exit(
        main(config_path=config, records=records, timeout=timeout, keep_stack=keep_stack)
    )
