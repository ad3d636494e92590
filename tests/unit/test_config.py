"""Config validation: good files load, bad ones name the field and the reason."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from courier.config.model import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).parents[2] / "config" / "example.yaml"


def base() -> dict[str, Any]:
    return {
        "kafka": {"topics": ["orders"]},
        "destinations": [
            {"name": "api", "kind": "rest", "url": "http://127.0.0.1:9/{key}"},
            {"name": "archive", "kind": "file", "path": "/tmp/x.jsonl"},
        ],
        "routes": {"rules": [{"prefix": "o-", "destination": "api"}], "default": "archive"},
    }


def error_of(data: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data, environ=environ or {})
    return str(err.value)


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE, environ={})
    names = [d.name for d in config.destinations]
    assert names == ["orders-api", "audit-api", "archive", "warehouse"]
    assert config.destination("orders-api").rate_limit == 5
    assert config.destination("orders-api").task_queue == "courier-dest-orders-api"


def test_env_references_are_substituted_with_defaults() -> None:
    data = base()
    data["destinations"][0]["headers"] = {"Authorization": "Bearer ${TOKEN}"}
    data["kafka"]["bootstrap_servers"] = "${BROKERS:-10.0.0.1:9092}"
    config = parse_config(data, environ={"TOKEN": "s3cret"})
    assert config.destination("api").headers == {"Authorization": "Bearer s3cret"}  # type: ignore[attr-defined]
    assert config.kafka.bootstrap_servers == "10.0.0.1:9092"


def test_missing_env_variable_names_the_field() -> None:
    data = base()
    data["destinations"][0]["headers"] = {"Authorization": "Bearer ${TOKEN}"}
    assert (
        "destinations[0].headers.Authorization: environment variable TOKEN is not set"
        in error_of(data)
    )


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["destinations"][0].pop("url"),
            "destinations[0].url: required field is missing",
        ),
        (
            lambda d: d["destinations"][1].update(rate_limit=-1),
            "destinations[1].rate_limit: Input should be greater than 0",
        ),
        (
            lambda d: d["destinations"][1].update(retry={"initial_interval": "soon"}),
            "destinations[1].retry.initial_interval: 'soon' is not a duration",
        ),
        (
            lambda d: d["destinations"][0].update(colour="red"),
            "destinations[0].colour: unknown field",
        ),
        (
            lambda d: d["kafka"].update(topic_pattern="x.*"),
            "kafka: give exactly one of `topics` or `topic_pattern`",
        ),
        (
            lambda d: d["routes"]["rules"].append({"regex": "(", "destination": "api"}),
            "routes.rules[1]: regex '(' is invalid",
        ),
        (
            lambda d: d["routes"]["rules"].append(
                {"prefix": "a", "exact": "b", "destination": "api"}
            ),
            "routes.rules[1]: give exactly one of",
        ),
        (
            lambda d: d["routes"].update(default="nowhere"),
            "routes.default: unknown destination 'nowhere'",
        ),
        (
            lambda d: d["destinations"].append(dict(d["destinations"][1])),
            "destination names must be unique; repeated: archive",
        ),
        (
            lambda d: d["kafka"].update(security={"protocol": "SASL_SSL"}),
            "kafka.security: protocol SASL_SSL needs sasl_mechanism",
        ),
    ],
)
def test_bad_config_names_the_field(mutate: Any, expected: str) -> None:
    data = base()
    mutate(data)
    assert expected in error_of(data)


def test_unknown_kind_lists_the_known_ones() -> None:
    data = base()
    data["destinations"][1]["kind"] = "ftp"
    message = error_of(data)
    assert (
        "destinations[1].kind: unknown destination kind 'ftp'; known: 'rest', 'file', 'postgres'"
        in message
    )


def test_load_config_reports_the_file_and_yaml_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    data = base()
    del data["kafka"]
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError, match=r"bad.yaml: invalid config\n  kafka: required field is missing"
    ):
        load_config(bad)


def test_secrets_never_reach_the_workflow_policy() -> None:
    data = base()
    data["destinations"][0]["headers"] = {"Authorization": "Bearer ${TOKEN}"}
    policy = parse_config(data, environ={"TOKEN": "s3cret"}).destination("api").policy()
    assert "s3cret" not in repr(policy)
    assert policy.task_queue == "courier-dest-api"


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("file", {"path": "/tmp/out.jsonl"}),
        ("postgres", {"dsn": "postgresql://h/db", "table": "t"}),
    ],
)
def test_a_default_range_is_one_activity_for_file_and_postgres(
    kind: str, fields: dict[str, Any]
) -> None:
    # Each activity costs Temporal ~6 history events: one per range keeps batch mode under
    # 0.01 events per record at the default range size.
    data = base()
    data["ingest"] = {"mode": "batch"}
    data["destinations"] = [{"name": "sink", "kind": kind, **fields}]
    data["routes"] = {"rules": [], "default": "sink"}
    config = parse_config(data, environ={})
    assert config.records_per_activity("sink") >= config.ingest.max_records


@pytest.mark.parametrize(
    ("rate_limit", "batch_size", "per_activity"),
    [(None, 500, 500), (5, 500, 5), (0.5, 500, 1), (20.7, 500, 20), (1000, 500, 500)],
)
def test_a_batch_activity_carries_at_most_one_second_of_the_rate(
    rate_limit: float | None, batch_size: int, per_activity: int
) -> None:
    data = base()
    data["ingest"] = {"mode": "batch"}
    data["destinations"][0] |= {"rate_limit": rate_limit, "batch_size": batch_size}
    config = parse_config(data, environ={})
    name = data["destinations"][0]["name"]
    assert config.records_per_activity(name) == per_activity
    assert config.destination(name).policy().batch_size == per_activity


def test_a_per_record_activity_carries_one_record() -> None:
    data = base()
    data["destinations"][0] |= {"rate_limit": 5}
    config = parse_config(data, environ={})
    name = data["destinations"][0]["name"]
    assert config.records_per_activity(name) == 1
