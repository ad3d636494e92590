"""`courier map --from` with Kafka down: one line saying why, as ingest says it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from courier.cli import app
from courier.config.model import parse_config
from courier.core.logs import THIRD_PARTY_LEVELS
from courier.ops import preview

runner = CliRunner()


def config(address: str) -> dict[str, object]:
    return {
        "kafka": {"topics": ["t"], "bootstrap_servers": address},
        "destinations": [{"name": "out", "kind": "file", "path": "/tmp/out.jsonl"}],
        "routes": {"default": "out"},
    }


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """`courier map --from` sets up logging for the process: put the test session's back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LEVELS}
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def refusing_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_reading_a_record_from_kafka_that_is_down_is_one_line() -> None:
    address = refusing_address()
    kafka = parse_config(config(address), environ={}).kafka
    with pytest.raises(preview.PreviewError) as caught:
        await preview.record_from_kafka(kafka, topic="t", partition=0, offset=0)
    assert str(caught.value) == (
        f"cannot reach Kafka at {address}: connection refused (is the broker running?); check "
        "kafka.bootstrap_servers"
    )


def test_courier_map_from_kafka_that_is_down_prints_one_line(
    tmp_path: Path, logging_restored: None
) -> None:
    address = refusing_address()
    path = tmp_path / "courier.yaml"
    path.write_text(yaml.safe_dump(config(address)))
    result = runner.invoke(app, ["map", "-d", "out", "--from", "t/0/0", "-c", str(path)])
    assert result.exit_code == 2
    assert result.output == (
        f"error: cannot reach Kafka at {address}: connection refused (is the broker running?); "
        "check kafka.bootstrap_servers\n"
    )
