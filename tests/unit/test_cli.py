"""The ``courier`` command line: route, config check, config schema, help."""

import json
from pathlib import Path

from typer.testing import CliRunner

from courier.cli import app

EXAMPLE = str(Path(__file__).parents[2] / "config" / "example.yaml")
runner = CliRunner()


def test_route_prints_destination_and_rule() -> None:
    result = runner.invoke(app, ["route", "order-17", "-c", EXAMPLE])
    assert result.exit_code == 0
    assert "orders-api" in result.stdout and "rule 1 (prefix 'order-')" in result.stdout
    fallback = runner.invoke(app, ["route", "whatever", "-c", EXAMPLE])
    assert fallback.exit_code == 0 and "archive" in fallback.stdout and "default" in fallback.stdout


def test_config_check_accepts_the_example() -> None:
    result = runner.invoke(app, ["config", "check", "-c", EXAMPLE])
    assert result.exit_code == 0
    assert "orders-api" in result.stdout and "5/s" in result.stdout


def test_config_check_names_the_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(EXAMPLE).read_text().replace("rate_limit: 5", "rate_limit: fast"))
    result = runner.invoke(app, ["config", "check", "-c", str(bad)])
    assert result.exit_code == 2
    assert "destinations[0].rate_limit" in result.output


def test_config_schema_is_json_with_descriptions() -> None:
    result = runner.invoke(app, ["config", "schema"])
    schema = json.loads(result.stdout)
    assert "kafka" in schema["properties"]
    assert "RestConfig" in schema["$defs"]
    assert schema["$defs"]["RestConfig"]["properties"]["rate_limit"]["description"]


def test_worker_without_a_choice_explains_itself() -> None:
    result = runner.invoke(app, ["worker", "-c", EXAMPLE])
    assert result.exit_code == 2 and "--destination NAME, --workflows or --all" in result.output
    unknown = runner.invoke(app, ["worker", "-c", EXAMPLE, "-d", "nope"])
    assert unknown.exit_code == 2 and "no destination named 'nope'" in unknown.output


def test_committed_config_reference_is_current() -> None:
    from courier.config_reference import render

    committed = (Path(__file__).parents[2] / "docs" / "config-reference.md").read_text()
    assert committed == render() + "\n", "run: courier config reference > docs/config-reference.md"
    assert "## destinations[] with kind: postgres" in committed
