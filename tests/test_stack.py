"""Unit tests of the local stack needing no server: settings, port checks, pid files, logs."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from courier_devtools import stack
from courier_devtools.stack import PortInUseError, StackError, StackSettings
from courier_devtools.stack import kafka as stack_kafka
from courier_devtools.stack.kafka import _Kafka
from courier_devtools.stack.postgres import _Postgres
from courier_devtools.stack.processes import _pid_alive
from courier_devtools.stack.temporal import _Temporal


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on 127.0.0.1 that something else listens on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings(tmp_path: Path, **ports: int) -> StackSettings:
    base = {
        "kafka_port": _free_port(),
        "kafka_controller_port": _free_port(),
        "temporal_port": _free_port(),
        "temporal_ui_port": _free_port(),
        "postgres_port": _free_port(),
    }
    return StackSettings(**{**base, **ports}, stack_dir=tmp_path / ".stack")


def test_defaults_match_the_documented_addresses() -> None:
    s = stack.settings_from_env({})
    assert (
        s.kafka_port,
        s.kafka_controller_port,
        s.temporal_port,
        s.temporal_ui_port,
        s.postgres_port,
    ) == (
        9092,
        9093,
        7233,
        8233,
        5432,
    )
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.temporal_address == "127.0.0.1:7233"
    assert s.temporal_ui_url == "http://127.0.0.1:8233"
    assert s.postgres_dsn == "postgresql://courier:courier@127.0.0.1:5432/courier"
    assert s.stack_dir == stack.REPO_ROOT / ".stack"


def test_ports_come_from_the_environment() -> None:
    s = stack.settings_from_env(
        {
            "COURIER_KAFKA_PORT": "19092",
            "COURIER_TEMPORAL_PORT": "17233",
            "COURIER_POSTGRES_PORT": "15432",
        }
    )
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    assert s.temporal_address == "127.0.0.1:17233"
    assert s.temporal_ui_port == 8233
    assert s.postgres_dsn.endswith("@127.0.0.1:15432/courier")


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        StackSettings().kafka_port = 1  # type: ignore[misc]


@pytest.mark.parametrize("value", ["abc", "0", "70000"])
def test_bad_port_values_name_the_variable(value: str) -> None:
    with pytest.raises(StackError, match="COURIER_POSTGRES_PORT"):
        stack.settings_from_env({"COURIER_POSTGRES_PORT": value})


def test_two_services_on_one_port_is_refused() -> None:
    with pytest.raises(
        StackError, match="COURIER_TEMPORAL_UI_PORT and COURIER_KAFKA_PORT|both 9092"
    ):
        stack.settings_from_env({"COURIER_TEMPORAL_UI_PORT": "9092"})


def test_search_attributes_fit_the_sqlite_dev_server() -> None:
    kinds = list(stack.SEARCH_ATTRIBUTES.values())
    assert set(kinds) <= {"Keyword", "Int"}
    assert kinds.count("Keyword") <= 10 and kinds.count("Int") <= 3
    assert set(stack.SEARCH_ATTRIBUTES) == {
        "CourierDestination",
        "CourierKey",
        "CourierTopic",
        "CourierPartition",
        "CourierOffset",
        "CourierFailedCount",
    }


def test_taken_port_names_port_service_and_env_var(tmp_path: Path, listener: int) -> None:
    settings = _settings(tmp_path, temporal_ui_port=listener)
    with pytest.raises(PortInUseError) as err:
        stack.check_ports(["kafka", "temporal", "postgres"], settings)
    message = str(err.value)
    assert f"port {listener} (temporal)" in message
    assert "COURIER_TEMPORAL_UI_PORT" in message
    assert "kafka" not in message


def test_free_ports_pass(tmp_path: Path) -> None:
    stack.check_ports(["kafka", "temporal", "postgres"], _settings(tmp_path))


async def test_start_fails_fast_on_a_taken_port(
    tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Postgres, "check_tools", lambda self: None)
    settings = _settings(tmp_path, postgres_port=listener)
    with pytest.raises(PortInUseError, match="COURIER_POSTGRES_PORT"):
        await stack.start_async(["postgres"], settings=settings)
    assert not (settings.stack_dir / "postgres").exists()  # nothing was prepared


def test_unknown_service_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="unknown service.*zookeeper"):
        stack.stop(["zookeeper"], settings=_settings(tmp_path), echo=None)


def test_missing_java_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(stack_kafka.shutil, "which", lambda name: None)
    with pytest.raises(stack.MissingToolError, match="java.*apt-get install openjdk"):
        _Kafka(_settings(tmp_path)).check_tools()


def test_missing_mvn_is_an_error_only_without_cached_jars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(
        stack_kafka.shutil, "which", lambda name: "/usr/bin/java" if name == "java" else None
    )
    kafka = _Kafka(_settings(tmp_path))
    with pytest.raises(stack.MissingToolError, match="mvn.*apt-get install maven"):
        kafka.check_tools()
    kafka.lib.mkdir(parents=True)
    (kafka.lib / "kafka_2.13-4.4.0.jar").touch()
    (kafka.home / "lib.sha256").write_text(kafka._pom_hash())
    kafka.check_tools()  # cached jars: Maven is not needed


def test_stale_pid_file_is_removed(tmp_path: Path) -> None:
    svc = _Temporal(_settings(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    svc.write_pid(proc.pid)
    assert svc.pid() is None
    assert not svc.pid_file.exists() and not svc.ports_file.exists()


def test_pid_of_an_unrelated_process_is_not_ours(tmp_path: Path) -> None:
    svc = _Temporal(_settings(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        svc.write_pid(proc.pid)  # a live process, but not our temporal server (PID reuse)
        assert svc.pid() is None
    finally:
        proc.kill()
        proc.wait()


def test_stop_terminates_our_process(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    svc = _Temporal(settings)
    svc.db.parent.mkdir(parents=True)
    # A stand-in whose command line carries the service's marker, like the real server.
    pid = svc._popen([sys.executable, "-c", "import sys, time; time.sleep(60)", svc.marker])
    svc.write_pid(pid)
    assert svc.pid() == pid
    assert [s.name for s in stack.status(settings=settings, probe=False) if s.running] == [
        "temporal"
    ]
    assert stack.stop(settings=settings, echo=None) == ["temporal"]
    assert svc.pid() is None and not _pid_alive(pid)


def test_running_service_with_other_ports_is_reported(tmp_path: Path) -> None:
    svc = _Temporal(_settings(tmp_path, temporal_port=17233))
    svc.root.joinpath("run").mkdir(parents=True)
    svc.ports_file.write_text("7233 8233\n")
    with pytest.raises(StackError, match="running on port.*7233 8233.*stop it first"):
        svc.check_same_ports()


def test_tail_and_logs(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    path = stack.log_path("kafka", settings=settings)
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert stack.tail_log("kafka", 3, settings=settings) == ["line 997", "line 998", "line 999"]
    seen: list[str] = []
    stack.logs("kafka", lines=2, settings=settings, echo=seen.append)
    assert seen == ["line 998", "line 999"]
    assert stack.tail_log("postgres", 5, settings=settings) == []


def test_kafka_properties(tmp_path: Path) -> None:
    kafka = _Kafka(_settings(tmp_path, kafka_port=19092, kafka_controller_port=19093))
    kafka.home.mkdir(parents=True)
    kafka._write_properties()
    props = dict(
        line.split("=", 1) for line in kafka.properties.read_text().splitlines() if "=" in line
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["num.partitions"] == "3"
    assert props["auto.create.topics.enable"] == "true"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
