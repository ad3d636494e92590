"""``courier config temporal-dynamic-config``: one partition for every destination queue."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from courier.cli import app

EXAMPLE = Path(__file__).parents[2] / "config" / "example.yaml"


def test_every_destination_queue_gets_one_read_and_one_write_partition() -> None:
    result = CliRunner().invoke(app, ["config", "temporal-dynamic-config", "-c", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    entries = yaml.safe_load(result.stdout)
    queues = {d["name"] for d in yaml.safe_load(EXAMPLE.read_text())["destinations"]}
    for key in ("matching.numTaskqueueReadPartitions", "matching.numTaskqueueWritePartitions"):
        assert {e["constraints"]["taskQueueName"] for e in entries[key]} == {
            f"courier-dest-{name}" for name in queues
        }
        assert all(e["value"] == 1 for e in entries[key])
        assert all(e["constraints"]["taskType"] == "Activity" for e in entries[key])


def test_fairness_is_on_for_the_workflow_queue_only() -> None:
    result = CliRunner().invoke(app, ["config", "temporal-dynamic-config", "-c", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    (entry,) = yaml.safe_load(result.stdout)["matching.enableFairness"]
    assert entry["value"] is True
    assert entry["constraints"]["taskType"] == "Workflow"
    assert entry["constraints"]["taskQueueName"] == "courier-workflows"
