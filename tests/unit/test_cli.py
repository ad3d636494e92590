"""The ``courier`` command line: route, config check, config schema, help."""

import json
from pathlib import Path

import pytest
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
    from courier.config.reference import render

    committed = (Path(__file__).parents[2] / "docs" / "config-reference.md").read_text()
    assert committed == render() + "\n", "run: courier config reference > docs/config-reference.md"
    assert "## destinations[] with kind: postgres" in committed


def test_malformed_yaml_is_one_line_with_line_column_and_the_whole_message(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  topics: [a, b\n  group: x\n")
    result = runner.invoke(app, ["config", "check", "-c", str(bad)])
    assert result.exit_code == 2
    assert result.output == (
        f"error: {bad} is not valid YAML: line 3, column 8: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 2, column 11); fix the YAML there\n"
    )


def test_invalid_config_is_one_line_naming_each_field_and_what_to_do(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = Path(EXAMPLE).read_text().replace("rate_limit: 5", "rate_limit: fast")
    bad.write_text(text.replace("group: courier-demo", "group: ''"))
    result = runner.invoke(app, ["config", "check", "-c", str(bad)])
    assert result.exit_code == 2
    assert result.output == (
        f"error: {bad}: invalid config: kafka.group (line 7, column 3): String should have at "
        "least 1 character; destinations[0].rate_limit (line 37, column 5): Input should be a "
        "valid number, unable to parse string as a number; fix the file (courier config "
        "reference describes every field)\n"
    )


def test_missing_config_says_how_to_give_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["route", "k", "-c", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2
    assert result.output == (
        f"error: cannot read config file {tmp_path / 'none.yaml'}: No such file or directory; "
        "pass --config FILE or set COURIER_CONFIG\n"
    )


def test_usage_errors_are_one_line() -> None:
    result = runner.invoke(app, ["limit", "orders-api", "fast", "-c", EXAMPLE])
    assert result.exit_code == 2
    assert result.output == (
        "error: rate must be a number of records per second or 'default', not 'fast'\n"
    )
    unknown = runner.invoke(app, ["limit", "nope", "5", "-c", EXAMPLE])
    assert unknown.exit_code == 2 and len(unknown.output.splitlines()) == 1


def test_long_running_commands_take_log_options() -> None:
    for command in ("run", "ingest", "worker"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert "--log-format" in result.output and "--log-level" in result.output
    bad = runner.invoke(app, ["worker", "--all", "--log-format", "xml", "-c", EXAMPLE])
    assert bad.exit_code == 2


def test_service_commands_share_one_options_object(monkeypatch: pytest.MonkeyPatch) -> None:
    from courier.cli import service
    from courier.cli.common import LogFormat, LogLevel

    logging_set: list[tuple[str, LogFormat]] = []
    runs: list[tuple[service.ServiceOptions, dict[str, object]]] = []
    monkeypatch.setattr(service, "setup_logging", lambda *args: logging_set.append(args))
    monkeypatch.setattr(
        service.ServiceOptions, "run", lambda self, config, **parts: runs.append((self, parts))
    )
    result = runner.invoke(
        app,
        ["worker", "-c", EXAMPLE, "--workflows", "--metrics-port", "9100", "--log-format", "json"],
    )
    assert result.exit_code == 0, result.output
    options = service.ServiceOptions(Path(EXAMPLE), 9100, LogFormat.json, LogLevel.INFO)
    assert runs == [(options, {"ingest": False, "destinations": [], "workflows": True})]
    assert logging_set == [("INFO", LogFormat.json)]
    help_text = runner.invoke(app, ["worker", "--help"], env={"COLUMNS": "200"}).output
    listed = [line.split()[1] for line in help_text.splitlines() if line.startswith("│ --")]
    assert listed[:7] == [
        "--config",
        "--destination",
        "--workflows",
        "--all",
        "--metrics-port",
        "--log-format",
        "--log-level",
    ]


def test_config_check_warns_about_a_valid_config_that_routes_nowhere(tmp_path: Path) -> None:
    path = tmp_path / "courier.yaml"
    path.write_text(
        "kafka: {topics: [orders], group: g}\n"
        "destinations: [{name: out, kind: file, path: /tmp/out.jsonl}]\n"
        "routes: {}\n"
    )
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning: routes: no rules and no default, so every record fails" in result.output


def test_config_check_estimates_the_record_rate_and_advises_a_mode(tmp_path: Path) -> None:
    path = tmp_path / "courier.yaml"
    path.write_text(
        "kafka: {topics: [orders], group: g}\n"
        "destinations:\n"
        "  - {name: a, kind: rest, url: 'http://127.0.0.1:9/a', rate_limit: 20}\n"
        "  - {name: b, kind: rest, url: 'http://127.0.0.1:9/b', rate_limit: 50}\n"
        "routes: {default: a}\n"
    )
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert (
        "rate limits add up to 70/s; per-record mode carried 42–71 records/s in all on a 2-core "
        "benchmark machine: above about 20/s, set ingest.mode: batch"
    ) in " ".join(result.stdout.split())
    batch = path.read_text().replace("routes:", "ingest: {mode: batch}\nroutes:")
    path.write_text(batch)
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert "rate limits add up to 70/s\n" in result.stdout
