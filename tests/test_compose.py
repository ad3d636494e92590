"""docker-compose.yml agrees with the local stack's defaults (devtools.stack.StackSettings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.stack import (
    POSTGRES_DB,
    POSTGRES_PASSWORD,
    POSTGRES_USER,
    StackSettings,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = StackSettings()
COURIER_SERVICES = ("ingest", "worker-workflows")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host ip, host port) of a service's ``ports``."""
    out = {}
    for spec in service.get("ports", []):
        *ip, host, container = str(spec).split(":")
        out[int(container)] = (ip[0] if ip else "0.0.0.0", int(host))
    return out


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: str(v) for k, v in raw.items()}


def destination_workers(services: dict[str, Any]) -> dict[str, str]:
    """service name -> destination name, for ``courier worker --destination NAME`` services."""
    out = {}
    for name, svc in services.items():
        cmd = svc.get("command") or []
        if cmd[:2] == ["courier", "worker"] and "--destination" in cmd:
            out[name] = cmd[cmd.index("--destination") + 1]
    return out


def test_services_are_all_there(services: dict[str, Any]) -> None:
    assert {"kafka", "temporal", "temporal-ui", "postgres", *COURIER_SERVICES} <= set(services)
    assert destination_workers(services), "at least one per-destination worker"
    assert services["kafka"]["image"].startswith("apache/kafka:4.")


def test_published_ports_match_the_local_stack(services: dict[str, Any]) -> None:
    assert published(services["kafka"])[9092] == (DEFAULTS.host, DEFAULTS.kafka_port)
    assert published(services["temporal"])[7233] == (DEFAULTS.host, DEFAULTS.temporal_port)
    assert published(services["temporal-ui"])[8080] == (DEFAULTS.host, DEFAULTS.temporal_ui_port)
    assert published(services["postgres"])[5432] == (DEFAULTS.host, DEFAULTS.postgres_port)


def test_kafka_advertises_the_local_bootstrap_address(services: dict[str, Any]) -> None:
    kafka = env(services["kafka"])
    assert f"PLAINTEXT_HOST://{DEFAULTS.kafka_bootstrap}" in kafka[
        "KAFKA_ADVERTISED_LISTENERS"
    ].split(",")
    assert kafka["KAFKA_NUM_PARTITIONS"] == "3"
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "true"
    assert kafka["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_postgres_database_and_user(services: dict[str, Any]) -> None:
    pg = env(services["postgres"])
    assert (pg["POSTGRES_DB"], pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"]) == (
        POSTGRES_DB,
        POSTGRES_USER,
        POSTGRES_PASSWORD,
    )
    temporal = env(services["temporal"])
    assert (temporal["POSTGRES_USER"], temporal["POSTGRES_PWD"]) == (
        POSTGRES_USER,
        POSTGRES_PASSWORD,
    )
    assert env(services["temporal-ui"])["TEMPORAL_ADDRESS"] == f"temporal:{DEFAULTS.temporal_port}"


def test_courier_services_reach_the_containers(services: dict[str, Any]) -> None:
    workers = list(destination_workers(services))
    for name in (*COURIER_SERVICES, *workers):
        e = env(services[name])
        assert e["COURIER_KAFKA_BOOTSTRAP"] == "kafka:29092", name
        assert e["COURIER_TEMPORAL_ADDRESS"] == f"temporal:{DEFAULTS.temporal_port}", name
        assert e["COURIER_POSTGRES_DSN"] == DEFAULTS.postgres_dsn.replace(
            f"{DEFAULTS.host}:{DEFAULTS.postgres_port}", f"postgres:{DEFAULTS.postgres_port}"
        ), name
        assert services[name]["build"] == ".", name


def test_courier_commands(services: dict[str, Any]) -> None:
    assert services["ingest"]["command"] == [
        "courier",
        "ingest",
        "--config",
        "/config/courier.yaml",
    ]
    assert services["worker-workflows"]["command"][:3] == ["courier", "worker", "--workflows"]
    for name in destination_workers(services):
        assert services[name]["command"][-2:] == ["--config", "/config/courier.yaml"]


def test_destination_workers_match_the_example_config(services: dict[str, Any]) -> None:
    config = ROOT / "config" / "example.yaml"
    if not config.exists():
        pytest.skip("no config/example.yaml")
    names = {d["name"] for d in yaml.safe_load(config.read_text())["destinations"]}
    assert set(destination_workers(services).values()) == names


def test_search_attributes_are_registered_by_courier_setup(services: dict[str, Any]) -> None:
    assert services["temporal-setup"]["command"] == ["courier", "setup"]
    assert services["temporal-setup"]["image"] == services["ingest"]["image"]
