"""The alert rules and the Grafana dashboard: well-formed, and naming only metrics Courier has.

promtool checks and unit-tests the rules (``make lint``); tests/integration/test_alerts.py runs
them and the dashboard's queries in a real Prometheus scraping a real Courier.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from courier.core import metrics
from courier.ops.k8s import MONITORING

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy" / "monitoring"
_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}


def exposed() -> set[str]:
    """Every series name ``courier.core.metrics`` exposes (``_created`` left out)."""
    names: set[str] = set()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            kind = metric._type
            names.update(metric._name + suffix for suffix in _SUFFIXES.get(kind, [""]))
    return names


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "dashboard.json").read_text())
    return loaded


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\bcourier_[a-z0-9_]+", expr))


def test_deploy_monitoring_is_what_the_package_ships() -> None:
    for name in ("alerts.yml", "dashboard.json"):
        assert (DEPLOY / name).read_text() == (MONITORING / name).read_text()


def test_every_alert_says_how_bad_what_it_means_and_what_to_do() -> None:
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names)) >= 8
    for rule in found:
        assert re.fullmatch(r"Courier[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule
        assert set(rule["annotations"]) == {"summary", "description"}, rule
        assert len(rule["annotations"]["description"]) > 100, rule["alert"]


def test_rules_and_panels_name_only_metrics_courier_has() -> None:
    known = exposed()
    exprs = [rule["expr"] for rule in rules()] + [
        target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])
    ]
    unknown = {name for expr in exprs for name in referenced(expr)} - known
    assert not unknown, f"no such metric: {sorted(unknown)}"


def test_the_dashboard_takes_its_datasource_and_destinations_as_variables() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["destination"]["definition"].startswith("label_values(")
    assert variables["destination"]["includeAll"] and variables["destination"]["multi"]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        for target in panel["targets"]:
            if "destination" in target["expr"] and "$destination" not in target["expr"]:
                pytest.fail(f"{panel['title']}: {target['expr']} ignores $destination")


def test_no_two_panels_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        taken |= cells
