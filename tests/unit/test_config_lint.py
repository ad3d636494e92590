"""What a valid config may still get wrong: warnings of `courier config check`, and the
credentials `courier deploy k8s` refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from courier.config.lint import WrittenSecret, lint, lint_file, written_secrets
from courier.config.model import load_config, parse_config
from courier.ops.k8s import DeployError, generate


def config(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kafka": {"topics": ["orders"]},
        "destinations": [{"name": "out", "kind": "file", "path": "/tmp/out.jsonl"}],
        "routes": {"default": "out"},
    }
    data.update(sections)
    return data


def warnings(data: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    return lint(parse_config(data, environ=environ or {}), data)


# ------------------------------------------------------------------------------------ routes
def test_a_config_that_routes_nowhere_is_warned_about() -> None:
    assert warnings(config(routes={})) == [
        "routes: no rules and no default, so every record fails (routes.unmatched: fail); add "
        "`default: out` under routes to send every record to out"
    ]
    two = config(
        routes={"unmatched": "skip"},
        destinations=[
            {"name": "a", "kind": "file", "path": "/tmp/a"},
            {"name": "b", "kind": "file", "path": "/tmp/b"},
        ],
    )
    assert warnings(two) == [
        "routes: no rules and no default, so every record is skipped (routes.unmatched: skip); "
        "add rules, or `default: NAME` under routes (one of a, b)"
    ]


def test_a_destination_no_route_leads_to_is_warned_about() -> None:
    data = config(
        destinations=[
            {"name": "a", "kind": "file", "path": "/tmp/a"},
            {"name": "b", "kind": "file", "path": "/tmp/b"},
            {"name": "c", "kind": "file", "path": "/tmp/c"},
        ],
        routes={"rules": [{"prefix": "x-", "destination": "c"}], "default": "a"},
    )
    assert warnings(data) == [
        "destinations[1] (b): no route leads to it (neither routes.default nor a rule names it), "
        "so it receives no records"
    ]


def test_the_example_config_has_nothing_to_warn_about() -> None:
    example = Path(__file__).parents[2] / "config" / "example.yaml"
    assert lint_file(example, load_config(example, environ={})) == []


# ----------------------------------------------------------------------------------- secrets
PG = {"name": "wh", "kind": "postgres", "table": "t"}


def test_a_password_written_in_a_dsn_is_warned_about_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "courier.yaml"
    path.write_text(
        "kafka: {topics: [orders]}\n"
        "destinations:\n"
        "  - name: wh\n"
        "    kind: postgres\n"
        "    table: t\n"
        "    dsn: postgresql://courier:hunter2@db:5432/courier\n"
        "routes: {default: wh}\n"
    )
    [warning] = lint_file(path, load_config(path, environ={}))
    assert warning == (
        "destinations[0].dsn (line 6, column 5) holds a password written in the config file, "
        "which anyone who can read the file sees; write ${WH_DSN} there and set WH_DSN in the "
        "environment (on Kubernetes, in the Secret courier-secrets)"
    )


@pytest.mark.parametrize(
    ("entry", "field", "what"),
    [
        (
            {**PG, "dsn": "host=db user=u password=hunter2 dbname=x"},
            "destinations[0].dsn",
            "a password",
        ),
        (
            {"name": "wh", "kind": "rest", "url": "https://u:hunter2@api.example.com/{key}"},
            "destinations[0].url",
            "a password",
        ),
        (
            {
                "name": "wh",
                "kind": "rest",
                "url": "https://api.example.com/{key}",
                "headers": {"authorization": "Bearer hunter2"},
            },
            "destinations[0].headers.authorization",
            "a credential",
        ),
    ],
)
def test_credentials_written_in_destinations_are_warned_about(
    entry: dict[str, Any], field: str, what: str
) -> None:
    [warning] = warnings(config(destinations=[entry], routes={"default": "wh"}))
    assert warning.startswith(f"{field} holds {what} written in the config file")
    assert "hunter2" not in warning


def test_a_sasl_password_written_in_the_file_is_warned_about() -> None:
    security = {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "u",
        "sasl_password": "hunter2",
    }
    [warning] = warnings(config(kafka={"topics": ["t"], "security": security}))
    assert warning.startswith(
        "kafka.security.sasl_password holds a password written in the config file, which anyone "
        "who can read the file sees; write ${KAFKA_SASL_PASSWORD} there"
    )


@pytest.mark.parametrize(
    "dsn",
    [
        "${PG_DSN}",
        "postgresql://courier:${PGPASSWORD}@db/courier",
        "postgresql://courier@db/courier",
        "postgresql://db/courier",
        "${PG_DSN:-postgresql://courier:hunter2@db/courier}",  # a default: deploy refuses it
    ],
)
def test_credentials_from_the_environment_are_not_warned_about(dsn: str) -> None:
    environ = {"PGPASSWORD": "x", "PG_DSN": "postgresql://db/x"}
    assert (
        warnings(config(destinations=[{**PG, "dsn": dsn}], routes={"default": "wh"}), environ) == []
    )


def test_written_secrets_tell_a_written_value_from_a_default() -> None:
    data = config(
        destinations=[
            {**PG, "dsn": "${PG_DSN:-postgresql://u:hunter2@db/x}"},
            {**PG, "name": "b", "dsn": "postgresql://u:${PGPASS:-hunter2}@db/x"},
            {**PG, "name": "c", "dsn": "postgresql://u:${PGPASS}@db/x"},
            {**PG, "name": "d", "dsn": "postgresql://u:${PGPASS:-}@db/x"},
        ],
        temporal={"api_key": "${TEMPORAL_API_KEY:-hunter2}"},
    )
    assert written_secrets(data) == [
        WrittenSecret(("destinations", 0, "dsn"), password=True, default_of="PG_DSN"),
        WrittenSecret(("destinations", 1, "dsn"), password=True, default_of="PGPASS"),
        WrittenSecret(("temporal", "api_key"), password=False, default_of="TEMPORAL_API_KEY"),
    ]


K8S = """
kafka: {topics: [orders]}
destinations:
  - {name: wh, kind: postgres, table: t, dsn: "DSN"}
routes: {default: wh}
"""


@pytest.mark.parametrize(
    ("dsn", "field"),
    [
        (
            "${PG_DSN:-postgresql://u:hunter2@db/x}",
            "destinations[0].dsn (its password, in the default of ${PG_DSN})",
        ),
        (
            "postgresql://u:${PGPASS:-hunter2}@db/x",
            "destinations[0].dsn (its password, in the default of ${PGPASS})",
        ),
        ("postgresql://u:hunter2@db/x", "destinations[0].dsn (its password)"),
    ],
)
def test_deploy_k8s_refuses_a_password_in_a_default(dsn: str, field: str) -> None:
    with pytest.raises(DeployError) as caught:
        generate(K8S.replace("DSN", dsn))
    assert str(caught.value) == (
        f"{field}: written into the config file, which becomes a ConfigMap anyone with read "
        "access to the namespace can see; write ${NAME} there (with no :-default) and put the "
        "value in the Secret courier-secrets"
    )
    generate(K8S.replace("DSN", "${PG_DSN}"))
