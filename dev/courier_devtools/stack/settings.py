"""Settings of the local stack: ports (from the environment), addresses and constants."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from courier.core.search_attributes import DEV_SERVER_FLAGS
from courier_devtools.stack.errors import StackError

REPO_ROOT = Path(__file__).resolve().parents[3]
STACK_DIR = (REPO_ROOT / ".stack").resolve()
"""Where the stack lives; a linked ``.stack`` (a git worktree sharing one) is the one it names."""
"""The repository root (holds ``stack/kafka/pom.xml`` and ``.stack/``)."""

SEARCH_ATTRIBUTES: dict[str, str] = DEV_SERVER_FLAGS
"""Custom Temporal search attributes registered by the local server: name -> type."""

HOST = "127.0.0.1"
POSTGRES_DB = "courier"
POSTGRES_USER = "courier"
POSTGRES_PASSWORD = "courier"
KAFKA_VERSION = "4.4.0"


def _env_port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise StackError(f"{name}={port} is outside 1-65535")
    return port


@dataclass(frozen=True, kw_only=True)
class StackSettings:
    """Ports and addresses of the local stack (read them with :func:`settings_from_env`)."""

    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    postgres_port: int = 5432
    schema_registry_port: int = 8081
    host: str = HOST
    stack_dir: Path = STACK_DIR

    #: Environment variable of each port field.
    ENV_VARS: ClassVar[dict[str, str]] = {
        "kafka_port": "COURIER_KAFKA_PORT",
        "kafka_controller_port": "COURIER_KAFKA_CONTROLLER_PORT",
        "temporal_port": "COURIER_TEMPORAL_PORT",
        "temporal_ui_port": "COURIER_TEMPORAL_UI_PORT",
        "postgres_port": "COURIER_POSTGRES_PORT",
        "schema_registry_port": "COURIER_SCHEMA_REGISTRY_PORT",
    }

    @property
    def kafka_bootstrap(self) -> str:
        """Kafka bootstrap servers, e.g. ``127.0.0.1:9092``."""
        return f"{self.host}:{self.kafka_port}"

    @property
    def temporal_address(self) -> str:
        """Temporal frontend gRPC address, e.g. ``127.0.0.1:7233``."""
        return f"{self.host}:{self.temporal_port}"

    @property
    def temporal_namespace(self) -> str:
        """Temporal namespace used by Courier on the dev server."""
        return "default"

    @property
    def temporal_ui_url(self) -> str:
        """Temporal Web UI URL, e.g. ``http://127.0.0.1:8233``."""
        return f"http://{self.host}:{self.temporal_ui_port}"

    @property
    def postgres_dsn(self) -> str:
        """DSN of the ``courier`` database as the ``courier`` user."""
        return (
            f"postgresql://{POSTGRES_USER}:{POSTGRES_PASSWORD}@{self.host}:"
            f"{self.postgres_port}/{POSTGRES_DB}"
        )

    @property
    def postgres_admin_dsn(self) -> str:
        """DSN of the ``postgres`` superuser (trust auth on 127.0.0.1)."""
        return f"postgresql://postgres@{self.host}:{self.postgres_port}/postgres"

    @property
    def schema_registry_url(self) -> str:
        """Base URL of the schema registry's Confluent-compatible API."""
        return f"http://{self.host}:{self.schema_registry_port}/apis/ccompat/v7"

    def ports(self) -> dict[str, list[tuple[int, str]]]:
        """Ports each service listens on, with the env var that sets each one."""
        env = self.ENV_VARS
        return {
            "kafka": [
                (self.kafka_port, env["kafka_port"]),
                (self.kafka_controller_port, env["kafka_controller_port"]),
            ],
            "temporal": [
                (self.temporal_port, env["temporal_port"]),
                (self.temporal_ui_port, env["temporal_ui_port"]),
            ],
            "postgres": [(self.postgres_port, env["postgres_port"])],
            "schema-registry": [(self.schema_registry_port, env["schema_registry_port"])],
        }


def settings_from_env(env: Mapping[str, str] | None = None) -> StackSettings:
    """Read :class:`StackSettings` from ``COURIER_*_PORT`` variables (and ``COURIER_STACK_DIR``)."""
    env = os.environ if env is None else env
    defaults = StackSettings()
    values: dict[str, object] = {
        field: _env_port(env, var, getattr(defaults, field))
        for field, var in StackSettings.ENV_VARS.items()
    }
    if env.get("COURIER_STACK_DIR"):
        values["stack_dir"] = Path(env["COURIER_STACK_DIR"]).resolve()
    settings = StackSettings(**values)  # type: ignore[arg-type]
    seen: dict[int, str] = {}
    for field, var in StackSettings.ENV_VARS.items():
        port = getattr(settings, field)
        if port in seen:
            raise StackError(f"{var} and {seen[port]} are both {port}: give each its own port")
        seen[port] = var
    return settings
