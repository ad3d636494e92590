"""Routing rules on the whole record (``when``): headers and value fields, in rule order with
the key rules, and a record the expression fails for gets a readable ``fail`` decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from courier.cli import app
from courier.config.model import ConfigError, RoutesConfig, parse_config
from ingest.routing import RouteDecision, Router
from workflows.types import Blob, Header, KafkaRecord

ROUTES = RoutesConfig.model_validate(
    {
        "rules": [
            {"exact": "vip", "destination": "priority"},
            {"when": 'headers.region = "eu"', "destination": "eu"},
            {"when": "value.total > 100", "destination": "big"},
        ],
        "default": "rest",
    }
)


def record(value: object, *, key: bytes = b"k", region: str | None = None) -> KafkaRecord:
    return KafkaRecord(
        topic="orders",
        topic_id="TID",
        partition=1,
        offset=5,
        key=Blob.of(key),
        value=Blob(json.dumps(value)),
        timestamp_ms=0,
        headers=[] if region is None else [Header("region", Blob(region))],
    )


def test_when_rules_route_on_headers_and_value_fields_in_order() -> None:
    router = Router(ROUTES)
    assert router.needs_record
    assert router.decide(b"vip", record({"total": 500}, region="eu")).destination == "priority"
    eu = router.decide(b"k", record({"total": 500}, region="eu"))
    assert (eu.destination, eu.rule) == ("eu", "rule 2 (when 'headers.region = \"eu\"')")
    assert router.decide(b"k", record({"total": 500}, region="us")).destination == "big"
    assert router.decide(b"k", record({"total": 5})).destination == "rest"
    assert router.decide(b"k", record({"no_total": 1})).destination == "rest"


def test_a_record_the_rule_fails_for_gets_a_readable_fail_decision() -> None:
    decision = Router(ROUTES).decide(b"k", record({"total": "lots"}))
    assert decision.action == "fail" and decision.destination is None
    assert decision.reason == (
        "no route: orders/1/5: rule 3: routes.rules[2].when: mapping `value.total > 100` failed: "
        'T2009: The expressions on either side of operator ">" must be of the same data type'
    )


def test_route_takes_a_decision_made_before_and_skips_when_rules_without_the_record() -> None:
    router = Router(ROUTES)
    made = RouteDecision("export", "eu", "rule 2")
    assert router.route(made) is made
    assert router.route(b"k").destination == "rest"  # key only: when rules cannot match
    assert not Router(RoutesConfig(default="x")).needs_record


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ({"when": "value.(", "destination": "a"}, "routes.rules[0]: mapping `value.(` does not"),
        ({"when": "x = 1", "destination": "a"}, "reads 'x', which a record does not have"),
        ({"when": "key", "prefix": "a", "destination": "a"}, "give exactly one of"),
    ],
)
def test_bad_when_rule_is_a_config_error(rule: dict[str, str], words: str) -> None:
    data = {
        "kafka": {"topics": ["t"]},
        "destinations": [{"name": "a", "kind": "file", "path": "/tmp/a"}],
        "routes": {"rules": [rule]},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ={})
    assert words in str(caught.value)


def test_courier_route_checks_when_rules_given_the_record(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {
                "kafka": {"topics": ["t"]},
                "destinations": [
                    {"name": "eu", "kind": "file", "path": "/tmp/eu"},
                    {"name": "other", "kind": "file", "path": "/tmp/other"},
                ],
                "routes": {
                    "rules": [{"when": 'headers.region = "eu"', "destination": "eu"}],
                    "default": "other",
                },
            }
        )
    )
    record = tmp_path / "r.json"
    record.write_text(json.dumps({"headers": {"region": "eu"}}))
    runner = CliRunner()
    given = runner.invoke(app, ["route", "k", "-c", str(config), "--record", str(record)])
    assert given.exit_code == 0
    assert given.output.split() == ["eu", "rule", "1", "(when", "'headers.region", "=", '"eu"\')']
    skipped = runner.invoke(app, ["route", "k", "-c", str(config)])
    assert skipped.exit_code == 0
    lines = [line.split() for line in skipped.output.splitlines()]
    assert ["other", "the", "default", "route"] in lines
    assert "rules with `when` need the whole record and were skipped" in skipped.output
