"""The ``kafka`` service: one KRaft node (broker + controller) run from Maven Central jars."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from courier_devtools.stack.errors import MissingToolError
from courier_devtools.stack.processes import Echo, _port_open, _run, _Service
from courier_devtools.stack.settings import KAFKA_VERSION, REPO_ROOT


class _Kafka(_Service):
    name = "kafka"
    start_timeout = 120.0
    stop_timeout = 30.0

    @property
    def home(self) -> Path:
        return self.root / "kafka"

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"

    @property
    def pom(self) -> Path:
        return REPO_ROOT / "stack" / "kafka" / "pom.xml"

    @property
    def marker(self) -> str:
        return str(self.properties)

    def listen(self) -> str:
        return f"{self.s.kafka_bootstrap} (controller :{self.s.kafka_controller_port})"

    def java(self) -> str | None:
        home = os.environ.get("JAVA_HOME")
        if home and (Path(home) / "bin" / "java").exists():
            return str(Path(home) / "bin" / "java")
        return shutil.which("java")

    def _pom_hash(self) -> str:
        return hashlib.sha256(self.pom.read_bytes()).hexdigest()

    def _lib_cached(self) -> bool:
        stamp = self.home / "lib.sha256"
        return (
            self.lib.is_dir()
            and any(self.lib.glob("kafka_2.13-*.jar"))
            and stamp.exists()
            and stamp.read_text().strip() == self._pom_hash()
        )

    def check_tools(self) -> None:
        if self.java() is None:
            raise MissingToolError(
                "java not found: Kafka needs Java 17+ "
                "(Debian: apt-get install openjdk-17-jre-headless)"
            )
        if not self._lib_cached() and shutil.which("mvn") is None:
            raise MissingToolError(
                "mvn not found: it fetches the Kafka jars once (Debian: apt-get install maven)"
            )

    def prepare(self, echo: Echo) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if not self._lib_cached():
            echo(f"kafka: fetching Kafka {KAFKA_VERSION} jars from Maven Central (once)")
            tmp = self.home / "lib.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            _run(
                [
                    shutil.which("mvn") or "mvn",
                    "-B",
                    "-q",
                    "-f",
                    str(self.pom),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={tmp}",
                ],
                what="Fetching the Kafka jars with Maven",
                log=logs / "kafka-mvn.log",
            )
            shutil.rmtree(self.lib, ignore_errors=True)
            tmp.rename(self.lib)
            (self.home / "lib.sha256").write_text(self._pom_hash() + "\n")
        self._write_properties()
        data = self.home / "data"
        if not (data / "meta.properties").exists():
            cluster_file = self.home / "cluster-id"
            if not cluster_file.exists():
                out = _run(
                    [
                        self.java() or "java",
                        "-cp",
                        f"{self.lib}/*",
                        "kafka.tools.StorageTool",
                        "random-uuid",
                    ],
                    what="Generating a Kafka cluster id",
                )
                cluster_file.write_text(out.strip().splitlines()[-1].strip() + "\n")
            cluster_id = cluster_file.read_text().strip()
            echo(f"kafka: formatting storage (cluster id {cluster_id})")
            _run(
                [
                    self.java() or "java",
                    "-Xmx256m",
                    *self._log4j(),
                    "-cp",
                    f"{self.lib}/*",
                    "kafka.tools.StorageTool",
                    "format",
                    "--ignore-formatted",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self.properties),
                ],
                what="Formatting Kafka storage",
                log=self.log_file,
            )

    def _log4j(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={REPO_ROOT / 'stack' / 'kafka' / 'log4j2.properties'}"]

    def _write_properties(self) -> None:
        s = self.s
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{s.host}:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{s.host}:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "3",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
        }
        text = "# Written by `courier stack` on every start: edit courier/stack/kafka.py instead.\n"
        text += "".join(f"{k}={v}\n" for k, v in props.items())
        self.properties.write_text(text)

    def launch(self) -> int:
        cmd = [
            self.java() or "java",
            "-Xmx512m",
            "-Xms128m",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            *self._log4j(),
            "-cp",
            f"{self.lib}/*",
            "kafka.Kafka",
            str(self.properties),
        ]
        return self._popen(cmd, cwd=self.home)

    async def probe(self) -> None:
        if not await _port_open(self.s.host, self.s.kafka_port):
            raise ConnectionError(f"{self.s.kafka_bootstrap} not accepting connections yet")
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.s.kafka_bootstrap, request_timeout_ms=5000
        )
        try:
            await admin.start()
            await admin.describe_cluster()
        finally:
            await admin.close()
