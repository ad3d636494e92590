"""The file destination holds every record exactly once, whatever happens between writes."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

from activities.files import FileConfig, FileDestination, record_line
from workflows.types import Blob, Header, KafkaRecord, OutgoingRecord


def outgoing(offset: int, *, value: bytes = b'{"n": 1}') -> OutgoingRecord:
    record = KafkaRecord(
        topic="orders",
        partition=0,
        offset=offset,
        key=Blob.of(b"k%d" % offset),
        value=Blob.of(value),
        timestamp_ms=1_700_000_000_000 + offset,
        headers=[Header("h", Blob.of(b"v"))],
    )
    return OutgoingRecord(idempotency_key=f"courier/g/orders/0/{offset}", record=record)


async def opened(path: Path, **overrides: Any) -> FileDestination:
    config = FileConfig.model_validate({"name": "f", "kind": "file", "path": path} | overrides)
    destination = FileDestination(config)
    await destination.open()
    return destination


def keys_in(path: Path) -> list[str]:
    return [json.loads(line)["idempotency_key"] for line in path.read_text().splitlines()]


async def test_line_format(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "out.jsonl"
    destination = await opened(path)
    await destination.write([outgoing(1), outgoing(2, value=b"\xff\x00")])
    await destination.close()

    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first == {
        "topic": "orders",
        "topic_id": None,
        "partition": 0,
        "offset": 1,
        "key": "k1",
        "key_encoding": "text",
        "value": {"n": 1},
        "value_encoding": "json",
        "timestamp_ms": 1_700_000_000_001,
        "headers": [{"name": "h", "value": "v", "value_encoding": "text"}],
        "idempotency_key": "courier/g/orders/0/1",
    }
    assert second["value_encoding"] == "base64"
    assert base64.b64decode(second["value"]) == b"\xff\x00"


async def test_repeated_writes_add_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    destination = await opened(path)

    assert await destination.write([outgoing(1)]) == "1 line written"
    assert await destination.write([outgoing(1)]) == "0 lines written (already present)"
    assert await destination.write([outgoing(1), outgoing(2), outgoing(2)]) == (
        "1 line written, 2 already present"
    )
    assert keys_in(path) == ["courier/g/orders/0/1", "courier/g/orders/0/2"]


async def test_two_instances_on_one_file_write_each_record_once(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    a = await opened(path, fsync="never")
    b = await opened(path, fsync="never")

    # Both "processes" retry overlapping records concurrently.
    await asyncio.gather(
        *(a.write([outgoing(i)]) for i in range(50)),
        *(b.write([outgoing(i)]) for i in range(25, 75)),
        *(b.write([outgoing(i), outgoing(i + 1)]) for i in range(0, 75, 5)),
    )
    await a.write([outgoing(74)])  # written by b since a last looked

    keys = keys_in(path)
    assert sorted(keys) == sorted(f"courier/g/orders/0/{i}" for i in range(75))


async def test_crash_mid_line_is_repaired_and_the_record_written_once(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    destination = await opened(path)
    await destination.write([outgoing(1)])
    # Another worker died halfway through writing record 2.
    with path.open("ab") as f:
        f.write(record_line(outgoing(2))[:25])

    assert await destination.write([outgoing(2)]) == "1 line written"
    assert await destination.write([outgoing(1), outgoing(2)]) == (
        "0 lines written (already present)"
    )
    assert keys_in(path) == ["courier/g/orders/0/1", "courier/g/orders/0/2"]


async def test_partial_line_found_at_open_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(record_line(outgoing(1)) + record_line(outgoing(2))[:-3])

    destination = await opened(path)
    await destination.write([outgoing(1), outgoing(2)])

    assert keys_in(path) == ["courier/g/orders/0/1", "courier/g/orders/0/2"]


async def test_crash_between_write_and_ack_then_retry_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    dying = await opened(path)
    await dying.write([outgoing(1), outgoing(2)])  # written, but the ack never reached Temporal
    del dying  # the worker process died without closing

    retrying = await opened(path)  # Temporal retries the activity on another worker
    assert await retrying.write([outgoing(1), outgoing(2)]) == ("0 lines written (already present)")
    await retrying.close()

    reopened = await opened(path)
    assert await reopened.write([outgoing(2), outgoing(3)]) == "1 line written, 1 already present"
    assert keys_in(path) == [f"courier/g/orders/0/{i}" for i in (1, 2, 3)]


async def test_a_deleted_file_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    destination = await opened(path)
    await destination.write([outgoing(1)])
    path.rename(tmp_path / "out.jsonl.1")  # rotated away

    await destination.write([outgoing(1), outgoing(2)])

    assert keys_in(path) == ["courier/g/orders/0/2"]
    assert keys_in(tmp_path / "out.jsonl.1") == ["courier/g/orders/0/1"]


_WRITER = """
import asyncio, sys
from pathlib import Path
from tests.activities.test_files import opened, outgoing

async def main(path: str, start: int, stop: int) -> None:
    destination = await opened(Path(path), fsync="never")
    Path(f"{path}.ready-{start}-{stop}").touch()
    go = Path(path + ".go")
    while not go.exists():  # start writing together
        await asyncio.sleep(0.005)
    for i in range(start, stop):
        await destination.write([outgoing(i), outgoing(stop - 1 - i + start)])

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


async def test_separate_processes_write_each_record_once(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    root = Path(__file__).resolve().parents[2]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WRITER, str(path), str(start), str(stop), cwd=root
        )
        for start, stop in [(0, 400), (200, 600), (0, 600)]
    ]
    while len(list(tmp_path.glob("*.ready-*"))) < len(procs):  # every writer has opened it
        assert all(p.returncode is None for p in procs), "a writer died before writing"
        await asyncio.sleep(0.01)
    Path(str(path) + ".go").touch()
    assert [await p.wait() for p in procs] == [0, 0, 0]

    assert sorted(keys_in(path)) == sorted(f"courier/g/orders/0/{i}" for i in range(600))


def test_a_line_keeps_every_digit_and_character_of_the_value() -> None:
    """Numbers beyond 64 bits and text beyond ASCII are written as the record has them."""
    value = '{"big": 123456789012345678901234567890, "small": 0.1, "name": "Zoë ✓"}'
    line = record_line(outgoing(1, value=value.encode()))
    assert b"123456789012345678901234567890" in line and "Zoë ✓".encode() in line
    assert json.loads(line)["value"] == json.loads(value)
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
