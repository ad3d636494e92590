"""A new destination kind is one module plus one registry line, and nothing else changes.

The ``outbox`` kind below exists only in this test. Registered the way the built-in kinds are
(``activities.registry.register``), it shows in ``courier config reference``, ``courier config
check``, ``courier map`` and ``courier deploy k8s`` through its own config model's hooks, with
no edit to the config, the operations or the command line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from activities import registry
from activities.base import DeploymentNeeds, DestinationConfig, Pace, no_pace
from courier.cli import app
from courier.config.reference import anchor, render
from courier.ops.k8s import k8s_name
from tests.unit.test_k8s import by_kind, documents, validate
from workflows.types import OutgoingRecord

runner = CliRunner()


class Envelope(BaseModel):
    """How the outbox addresses each message."""

    model_config = ConfigDict(extra="forbid")

    sender: str = Field(default="courier@example.com", description="From address.")
    subject: str = Field(default="record {key}", description="Subject; {key} is the key.")


class OutboxConfig(DestinationConfig):
    """A spool directory of mail messages, one per record, that a relay sends on."""

    kind: Literal["outbox"] = Field(description="Always `outbox`.")
    spool: Path = Field(description="Directory the messages wait in for the relay.")
    envelope: Envelope = Field(default_factory=Envelope, description="Message headers.")

    def create(self) -> OutboxDestination:
        """The destination this config describes (not yet opened)."""
        return OutboxDestination(self)

    def deployment_needs(self) -> DeploymentNeeds:
        """One writer, on a volume holding the spool."""
        return DeploymentNeeds(
            single_writer=True, data_dirs=(self.spool,), why="the relay reads one spool"
        )

    @classmethod
    def describe_preview(cls, shown: Mapping[str, Any]) -> list[str]:
        """The message as the relay would find it."""
        return [f"# queued in {shown['spool']}", *shown["message"].splitlines()]


class OutboxDestination:
    """Writes nothing: ``courier map`` only needs its preview."""

    def __init__(self, config: OutboxConfig) -> None:
        self.config = config

    async def open(self) -> None:
        """Nothing to prepare."""

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        """Not used here."""
        raise NotImplementedError

    async def close(self) -> None:
        """Nothing to release."""

    def preview(self, item: OutgoingRecord) -> dict[str, object]:
        """The message this record would become."""
        key = item.record.key.text if item.record.key is not None else ""
        envelope = self.config.envelope
        subject = envelope.subject.replace("{key}", key)
        value = item.record.value.text if item.record.value is not None else ""
        message = f"From: {envelope.sender}\nSubject: {subject}\n\n{value}"
        return {"spool": str(self.config.spool), "message": message}


CONFIG = {
    "kafka": {"topics": ["orders"]},
    "destinations": [
        {"name": "api", "kind": "rest", "url": "http://api.test/{key}"},
        {"name": "mail", "kind": "outbox", "spool": "spool/mail", "max_concurrency": 2},
    ],
    "routes": {"default": "mail"},
    "kubernetes": {"destination_defaults": {"max_replicas": 3}},
}


@pytest.fixture
def outbox() -> Iterator[None]:
    registry.register(OutboxConfig)
    try:
        yield
    finally:
        registry.unregister("outbox")


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "courier.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return str(path)


def test_a_registered_kind_has_its_sections_in_the_config_reference(outbox: None) -> None:
    result = runner.invoke(app, ["config", "reference"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "## destinations[] with kind: outbox" in text
    assert "| `spool` | Path | required | Directory the messages wait in for the relay. |" in text
    assert "## destinations[].envelope (kind: outbox)" in text  # its own sub-model, walked to
    assert "[kind: outbox](#destinations-with-kind-outbox)" in text
    headings = {anchor(line[3:]) for line in text.splitlines() if line.startswith("## ")}
    links = {link.partition(")")[0] for link in text.split("](#")[1:]}
    assert links <= headings, f"links to missing sections: {sorted(links - headings)}"


def test_a_registered_kind_passes_config_check(outbox: None, config: str) -> None:
    result = runner.invoke(app, ["config", "check", "-c", config])
    assert result.exit_code == 0, result.output
    [row] = [line for line in result.stdout.splitlines() if "mail" in line and "│" in line]
    assert "outbox" in row and "2" in row
    bad = Path(config).with_name("bad.yaml")
    bad.write_text(Path(config).read_text().replace("spool: spool/mail", "spol: spool/mail"))
    refused = runner.invoke(app, ["config", "check", "-c", str(bad)])
    assert refused.exit_code == 2
    assert "destinations[1].spool (line 5, column 3): required field is missing" in refused.output
    assert "destinations[1].spol (line 8, column 3): unknown field; did you mean 'spool'?" in (
        refused.output
    )


def test_a_registered_kind_shows_its_preview_in_courier_map(
    outbox: None, config: str, tmp_path: Path
) -> None:
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"key": "k-1", "value": "hello"}))
    args = ["map", "-d", "mail", "--record", str(record), "-c", config]

    result = runner.invoke(app, args)

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "# mail (outbox) would receive:\n"
        "# queued in spool/mail\n"
        "From: courier@example.com\n"
        "Subject: record k-1\n"
        "\n"
        "hello\n"
    )
    as_json = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert as_json["kind"] == "outbox" and as_json["spool"] == "spool/mail"


def test_a_registered_kind_gets_what_it_needs_from_courier_deploy_k8s(
    outbox: None, config: str
) -> None:
    result = runner.invoke(app, ["deploy", "k8s", "-c", config])

    assert result.exit_code == 0, result.output
    docs = documents(result.stdout)
    name = k8s_name("courier", "dest", "mail")
    deployment = by_kind(docs, "Deployment")[name]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["data"] == "/app/spool/mail"
    assert f"{name}-data" in by_kind(docs, "PersistentVolumeClaim")
    assert by_kind(docs, "ScaledObject")[name]["spec"]["maxReplicaCount"] == 1
    assert "# Note: mail (kind outbox) runs one pod at most: the relay reads one spool" in (
        result.stdout
    )
    api = k8s_name("courier", "dest", "api")
    assert by_kind(docs, "ScaledObject")[api]["spec"]["maxReplicaCount"] == 3
    for doc in docs:
        validate(doc)


def test_a_forgotten_kind_is_gone_from_the_config(config: str) -> None:
    registry.register(OutboxConfig)
    registry.unregister("outbox")

    assert list(registry.KINDS) == ["rest", "file", "postgres", "kafka"]
    assert "outbox" not in render()
    result = runner.invoke(app, ["config", "check", "-c", config])
    assert result.exit_code == 2
    assert (
        "unknown destination kind 'outbox'; known: 'rest', 'file', 'postgres', 'kafka'"
        in result.output
    )


def test_a_kind_registers_once_under_a_name_of_its_own() -> None:
    class Clash(OutboxConfig):
        """Another kind that calls itself rest."""

        kind: Literal["rest"] = Field(description="Taken.")

    with pytest.raises(ValueError, match="'rest' is already registered"):
        registry.register(Clash)
    assert list(registry.KINDS) == ["rest", "file", "postgres", "kafka"]


def test_a_kind_without_a_preview_hook_shows_each_field_as_json() -> None:
    lines = DestinationConfig.describe_preview({"to": "a@b.test", "size": 3})
    assert lines == ['to: "a@b.test"', "size: 3"]
