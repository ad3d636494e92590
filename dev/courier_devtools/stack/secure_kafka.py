"""A private Kafka broker that speaks only TLS: SASL_SSL (SCRAM-SHA-512) and mutual TLS.

It runs next to the stack's own broker, never instead of it: the same jars (``.stack/kafka/lib``,
fetched when the stack first started), its own free ports on 127.0.0.1, its own data folder, and
its own process, stopped by PID. What it proves is what a production cluster asks of Courier:

- **TLS**: the listener's certificate is signed by a CA made at test time
  (:func:`courier_devtools.certs.make_certificates`, with ``openssl``); clients must trust that CA.
- **SASL/SCRAM-SHA-512**: the users and their salted credentials are written into the cluster
  metadata by Kafka's own ``kafka-storage format --add-scram``, before the first start (the
  KRaft way; there is no ZooKeeper to write them to). The broker itself authenticates to its
  SASL_SSL listener as ``admin`` (inter-broker listener).
- **Mutual TLS**: a second listener (:attr:`SecureKafka.mtls_bootstrap`, protocol SSL) admits
  only clients with a certificate signed by the test CA (``ssl.client.auth=required``).

Typical use (a pytest fixture)::

    broker = SecureKafka(stack_settings, tmp_dir, users={"courier": "s3cret"})
    await broker.start()
    ...  # broker.bootstrap, broker.security("courier", "s3cret"), broker.client_options()
    broker.stop()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from courier_devtools.certs import Certificates, make_certificates
from courier_devtools.stack.errors import ServiceStartError, StackError
from courier_devtools.stack.kafka import _Kafka
from courier_devtools.stack.processes import _children_of, _pid_alive, _port_open, _run, _tail
from courier_devtools.stack.settings import StackSettings

MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "admin"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _cluster_id() -> str:
    """A Kafka cluster ID (a random UUID, base64url without padding; Kafka avoids a leading -)."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


class SecureKafka:
    """One KRaft node (broker + controller) whose client listeners are SASL_SSL and mutual TLS."""

    def __init__(
        self,
        settings: StackSettings,
        directory: Path,
        *,
        users: dict[str, str],
        certificates: Certificates | None = None,
    ) -> None:
        self._stack_kafka = _Kafka(settings)
        self.host = settings.host
        self.directory = directory
        self.users = {ADMIN_USER: "admin-" + uuid.uuid4().hex[:12], **users}
        self.certificates = certificates or make_certificates(directory / "certs")
        self.port = free_port(self.host)
        self.mtls_port = free_port(self.host)
        self.controller_port = free_port(self.host)
        self.pid: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The SASL_SSL listener, ``127.0.0.1:PORT``."""
        return f"{self.host}:{self.port}"

    @property
    def mtls_bootstrap(self) -> str:
        """The SSL listener that requires a client certificate (mutual TLS), ``127.0.0.1:PORT``."""
        return f"{self.host}:{self.mtls_port}"

    @property
    def log_file(self) -> Path:
        """The broker's log (stdout and stderr)."""
        return self.directory / "kafka.log"

    def security(self, user: str, password: str, *, cafile: Path | None = None) -> dict[str, Any]:
        """Courier's ``kafka.security`` section for ``user`` (trusting the test CA by default)."""
        return {
            "protocol": "SASL_SSL",
            "sasl_mechanism": MECHANISM,
            "sasl_username": user,
            "sasl_password": password,
            "ssl_cafile": str(cafile or self.certificates.ca),
        }

    def client_options(self, user: str = ADMIN_USER) -> dict[str, Any]:
        """aiokafka keyword arguments to connect as ``user`` (default: the broker's admin)."""
        from aiokafka.helpers import create_ssl_context

        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "ssl_context": create_ssl_context(cafile=str(self.certificates.ca)),
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.users[user],
        }

    # ----------------------------------------------------------------------------- lifecycle
    def _properties(self) -> Path:
        c = self.certificates
        admin = self.users[ADMIN_USER]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": (
                f"SASL_SSL://{self.host}:{self.port},MTLS://{self.host}:{self.mtls_port},"
                f"CONTROLLER://{self.host}:{self.controller_port}"
            ),
            "advertised.listeners": (
                f"SASL_SSL://{self.host}:{self.port},MTLS://{self.host}:{self.mtls_port}"
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL",
            "listener.name.mtls.ssl.client.auth": "required",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{ADMIN_USER}" password="{admin}";'
            ),
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(c.keystore),
            "ssl.keystore.password": c.keystore_password,
            "ssl.key.password": c.keystore_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(c.ca),
            "ssl.client.auth": "none",
            "log.dirs": str(self.directory / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        path = self.directory / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _java(self, *args: str, heap: str) -> list[str]:
        kafka = self._stack_kafka
        return [
            kafka.java() or "java",
            f"-Xmx{heap}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            *kafka._log4j(),
            "-cp",
            f"{kafka.lib}/*",
            *args,
        ]

    def _format(self, properties: Path) -> None:
        """Format the storage with every user's SCRAM credentials (Kafka's own StorageTool)."""
        scram: list[str] = []
        for user, password in self.users.items():
            scram += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
        _run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                _cluster_id(),
                "-c",
                str(properties),
                *scram,
                heap="256m",
            ),
            what="Formatting the SASL_SSL broker's storage",
        )  # no log: the command line holds the passwords

    async def start(self) -> None:
        """Format, launch and wait until an authenticated SASL_SSL client gets cluster metadata."""
        kafka = self._stack_kafka
        if kafka.java() is None or not kafka._lib_cached():
            raise StackError(
                "the Kafka jars are not there yet: start the stack once (courier stack start)"
            )
        for user, password in self.users.items():
            if not (user.isalnum() and password.replace("-", "").isalnum()):
                raise StackError(f"user {user!r}: use letters, digits (and - in passwords) only")
        self.directory.mkdir(parents=True, exist_ok=True)
        properties = self._properties()
        await asyncio.to_thread(self._format, properties)
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                self._java("kafka.Kafka", str(properties), heap="384m"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
            )
        self.pid = self._process.pid
        try:
            await self._wait_ready()
        except BaseException:
            self.stop()
            raise

    async def _wait_ready(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        deadline = time.monotonic() + START_TIMEOUT_S
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                tail = "\n".join(_tail(self.log_file, 25))
                raise ServiceStartError(f"the SASL_SSL broker exited during start-up:\n{tail}")
            if not await _port_open(self.host, self.port):
                await asyncio.sleep(0.5)
                continue
            admin = AIOKafkaAdminClient(**self.client_options(), request_timeout_ms=5000)
            try:
                async with asyncio.timeout(10):
                    await admin.start()
                    await admin.describe_cluster()
                return
            except Exception as exc:
                last = exc
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()
            await asyncio.sleep(0.5)
        raise ServiceStartError(
            f"the SASL_SSL broker at {self.bootstrap} was not ready after "
            f"{START_TIMEOUT_S:.0f}s (last probe: {last!r}); see {self.log_file}"
        )

    def stop(self) -> None:
        """SIGTERM the broker (SIGKILL it and its children after :data:`STOP_TIMEOUT_S`)."""
        pid, process = self.pid, self._process
        if pid is None or process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for child in [*_children_of(pid), pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            process.wait(10)
        assert not _pid_alive(pid)
        self.pid = self._process = None
