"""``courier config``: check the config file, print its reference, schema or Temporal's part."""

from __future__ import annotations

import typer

from courier.cli.common import DEFAULT_CONFIG_PATH, OUT, ConfigOption, JsonOption, load

app = typer.Typer(help="Check the config file or print its JSON schema.", no_args_is_help=True)


@app.command("check")
def check(config: ConfigOption = DEFAULT_CONFIG_PATH, json_: JsonOption = False) -> None:
    """Validate the config file and summarise its destinations and routes."""
    # lazy: ops.config_file (the config models) takes ~0.25 s to import
    from courier.ops import config_file

    raise typer.Exit(config_file.check(load(config), config, OUT, as_json=json_))


@app.command("temporal-dynamic-config")
def temporal_dynamic_config(config: ConfigOption = DEFAULT_CONFIG_PATH) -> None:
    """Print the Temporal dynamic config (YAML) that makes the destinations' rate limits exact."""
    # lazy: ops.dynamic_config (the config models) takes ~0.25 s to import
    from courier.ops import dynamic_config

    OUT.write(dynamic_config.render(load(config)))


@app.command("reference")
def reference() -> None:
    """Print the config reference (every field, its type, default and meaning) as Markdown."""
    # lazy: config_reference (the config models) takes ~0.25 s to import
    from courier.config import reference as config_reference

    OUT.write(config_reference.render() + "\n")


@app.command("schema")
def schema() -> None:
    """Print the JSON schema of the config file (for editors and the config reference)."""
    # lazy: ops.config_file (the config models) takes ~0.25 s to import
    from courier.ops import config_file

    OUT.write(config_file.schema())
