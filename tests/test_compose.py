"""docker-compose.yml agrees with the local stack's defaults (courier_devtools StackSettings)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from courier_devtools.stack import (
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


def test_images_are_pinned_and_none_is_deprecated(services: dict[str, Any]) -> None:
    images = {name: svc["image"] for name, svc in services.items() if "image" in svc}
    for name, image in images.items():
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: pin a version, not {image!r}"
    assert not any("auto-setup" in image for image in images.values()), "deprecated image"
    server = images["temporal"].partition(":")[2]
    assert images["temporal"].startswith("temporalio/server:")
    for job in ("temporal-schema", "temporal-namespace"):
        assert images[job] == f"temporalio/admin-tools:{server}", "tools match the server"


def test_temporal_schema_namespace_and_setup_run_in_order(services: dict[str, Any]) -> None:
    def waits_for(name: str) -> dict[str, str]:
        return {dep: cond["condition"] for dep, cond in services[name]["depends_on"].items()}

    assert waits_for("temporal") == {"temporal-schema": "service_completed_successfully"}
    assert waits_for("temporal-namespace") == {"temporal": "service_healthy"}
    assert waits_for("temporal-setup") == {"temporal-namespace": "service_completed_successfully"}
    assert env(services["temporal-namespace"])["RETENTION"] == "168h"
    schema = env(services["temporal-schema"])
    assert (schema["POSTGRES_USER"], schema["SQL_PASSWORD"]) == (POSTGRES_USER, POSTGRES_PASSWORD)


def test_mounted_scripts_exist_and_parse(services: dict[str, Any]) -> None:
    for name in ("temporal-schema", "temporal-namespace"):
        svc = services[name]
        [mount] = svc["volumes"]
        host, container, _ = mount.split(":")
        script = svc["entrypoint"][-1]
        assert script.startswith(container + "/")
        path = ROOT / host / script.removeprefix(container + "/")
        assert path.is_file(), path
        subprocess.run(["sh", "-n", str(path)], check=True)


def test_dynamic_config_file_is_what_courier_generates(services: dict[str, Any]) -> None:
    from courier.config.model import load_config
    from courier.ops.dynamic_config import render

    temporal = services["temporal"]
    [mount] = temporal["volumes"]
    host, container, _ = mount.split(":")
    path = env(temporal)["DYNAMIC_CONFIG_FILE_PATH"]  # relative to /etc/temporal
    assert f"/etc/temporal/{path}".startswith(container + "/")
    file = ROOT / host / Path(path).name
    expected = render(load_config(ROOT / "config" / "example.yaml", environ={}))
    assert file.read_text() == expected, (
        "regenerate: courier config temporal-dynamic-config -c config/example.yaml > " + str(file)
    )
