"""Config errors say where the field is in the file and what to do about it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from courier.config.model import ConfigError, config_problem, load_config, parse_config


def config(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kafka": {"topics": ["orders"]},
        "destinations": [{"name": "out", "kind": "file", "path": "/tmp/out.jsonl"}],
        "routes": {"default": "out"},
    }
    data.update(sections)
    return data


# ---------------------------------------------------------------- where and what to do
def test_an_unset_variable_says_to_set_it_not_to_fix_the_file(tmp_path: Path) -> None:
    path = tmp_path / "courier.yaml"
    path.write_text(
        "kafka: {topics: [orders], bootstrap_servers: '${BROKERS}'}\n"
        "destinations: [{name: out, kind: file, path: /tmp/o}]\n"
        "routes: {default: out}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert config_problem(path, caught.value) == (
        f"{path}: invalid config: kafka.bootstrap_servers (line 1, column 27): environment "
        "variable BROKERS is not set; set BROKERS in the environment (or give a default: "
        "${BROKERS:-value})"
    )


def test_every_unset_variable_is_named() -> None:
    data = config(kafka={"topics": ["${TOPIC}"], "bootstrap_servers": "${BROKERS}"})
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ={})
    assert str(caught.value).splitlines() == [
        "  kafka.topics[0]: environment variable TOPIC is not set; set TOPIC in the environment "
        "(or give a default: ${TOPIC:-value})",
        "  kafka.bootstrap_servers: environment variable BROKERS is not set; set BROKERS in the "
        "environment (or give a default: ${BROKERS:-value})",
    ]


def test_errors_give_the_line_of_the_key_and_suggest_a_known_field(tmp_path: Path) -> None:
    path = tmp_path / "courier.yaml"
    path.write_text(
        "kafka:\n"
        "  topics: [orders]\n"
        "  gruop: x\n"
        "temporal:\n"
        "  tls: {domian: t.example}\n"
        "destinations:\n"
        "  - name: api\n"
        "    kind: rest\n"
        "    url: http://h/{key}\n"
        "    rate_limt: 5\n"
        "    body: {mapping: value, templat: x}\n"
        "  - name: wh\n"
        "    kind: postgres\n"
        "    table: t\n"
        "    colour: red\n"
        "routes: {default: api}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).splitlines()[1:] == [
        "  kafka.gruop (line 3, column 3): unknown field; did you mean 'group'?",
        "  temporal.tls.domian (line 5, column 9): unknown field; did you mean 'domain'?",
        "  destinations[0].body.templat (line 11, column 28): unknown field; did you mean "
        "'template'?",
        "  destinations[0].rate_limt (line 10, column 5): unknown field; did you mean "
        "'rate_limit'?",
        "  destinations[1].dsn (line 12, column 5): required field is missing",
        "  destinations[1].colour (line 15, column 5): unknown field; did you mean 'columns'?",
    ]
    assert config_problem(path, caught.value).endswith(
        "; fix the file (courier config reference describes every field)"
    )


def test_an_unknown_kind_is_located_at_its_kind(tmp_path: Path) -> None:
    path = tmp_path / "courier.yaml"
    path.write_text(
        "kafka: {topics: [orders]}\n"
        "destinations:\n"
        "  - name: x\n"
        "    kind: ftp\n"
        "routes: {default: x}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "destinations[0].kind (line 4, column 5): unknown destination kind 'ftp'" in str(
        caught.value
    )


def test_a_parsed_tree_without_its_yaml_has_no_positions() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_load("kafka: {topics: [a], gruop: x}"), environ={})
    assert "  kafka.gruop: unknown field; did you mean 'group'?" in str(caught.value)
