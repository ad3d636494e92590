"""File destination: one JSON line per record, each record in the file exactly once.

Each line is the record envelope of ``activities.encoding`` plus its ``idempotency_key``, or,
with ``line`` set, the object a JSONata mapping (``activities.mapping``) makes of the record,
plus its ``idempotency_key``.

Why a record is never in the file twice
---------------------------------------
The file itself is the record of what was exported: a record is present iff a complete line
with its ``idempotency_key`` is in the file. Every write is one critical section under an
exclusive ``flock`` on the file, which every writer (any process, any destination instance)
takes before touching it:

1. **Repair.** If the file ends without a newline, a writer died mid-line (nobody else can be
   writing, we hold the lock). The partial line is cut off; its record is therefore absent and
   will be written whole by the retry.
2. **Catch up.** Read the bytes appended since this instance last looked (lines of other
   processes) and add their keys to the in-memory seen-set. ``open()`` built that set from the
   whole file, so under the lock the set equals the keys in the file.
3. **Append** only records whose key is not in the set (nor earlier in the batch), in one
   write, then ``fsync`` (policy ``always``) before ``write()`` returns, i.e. before the
   activity is acknowledged.

A worker that dies after step 3 but before Temporal records the ack leaves the lines in the
file; the retried activity (in any process) finds the keys in step 2 and appends nothing. A
worker that dies during step 3 leaves at most a partial last line, cut off in step 1.

Limits: ``flock`` is advisory, so only Courier may append to the file; use a local
filesystem (``flock`` over network filesystems is unreliable); with ``fsync: never`` a machine
crash can lose lines written before it, which a retry then rewrites only if the activity was
not yet acknowledged. The seen-set holds every key in the file, so memory grows with it. If the
file is renamed or deleted (rotation), the next write starts a new file at ``path``; records
this instance saw in the old one are still never written again by it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from activities.base import DeploymentNeeds, DestinationConfig, Pace, batch_size_field, no_pace
from activities.encoding import record_envelope
from activities.errors import PermanentExportError, RetryableExportError
from activities.mapping import Expression, MappingError, check_mappings, record_data
from workflows.types import OutgoingRecord

_READ_CHUNK = 1 << 20


class FileConfig(DestinationConfig):
    """A JSON-lines file that holds every exported record exactly once."""

    # A whole default range (ingest.max_records) in one activity, one write (and one fsync):
    # each activity costs Temporal about as much as thousands of records cost this kind.
    batch_size: int = batch_size_field(5_000)

    def create(self) -> FileDestination:
        """The destination this config describes (not yet opened)."""
        return FileDestination(self)

    def deployment_needs(self) -> DeploymentNeeds:
        """One writer at a time, on a volume that holds the file's directory."""
        return DeploymentNeeds(
            single_writer=True,
            data_dirs=(self.path.parent,),
            why="its file is on a ReadWriteOnce volume and the sink locks it",
        )

    @classmethod
    def describe_preview(cls, shown: Mapping[str, Any]) -> list[str]:
        """The file of a preview and the line appended to it."""
        return [f"# appended to {shown['path']}", shown["line"].rstrip("\n")]

    kind: Literal["file"] = Field(description="Always `file`.")
    path: Path = Field(description="File to append to; parent directories are created.")
    fsync: Literal["always", "never"] = Field(
        default="always",
        description="`always` syncs each write to disk before the export counts as done; "
        "`never` leaves it to the OS (faster; a machine crash can lose recent lines).",
    )
    line: str | None = Field(
        default=None,
        description="JSONata mapping over the record (see the README) that makes each line; it "
        "must give an object, to which Courier adds `idempotency_key` (the file's record of "
        "what it holds). Unset writes the record envelope.",
    )

    @model_validator(mode="after")
    def _mappings_compile(self) -> FileConfig:
        if self.line is not None:
            check_mappings(self.name, {"line": ("expression", self.line)})
        return self


def record_line(item: OutgoingRecord, mapping: Expression | None = None) -> bytes:
    """The JSON line (with its newline) that represents a record in the file.

    With a ``mapping`` (of the ``line`` field) the line is its result; MappingError when it
    fails for this record or does not give an object.
    """
    if mapping is None:
        line = record_envelope(item.record)
    else:
        line = mapping.require(record_data(item))
        if not isinstance(line, dict):
            raise mapping.error(
                f"gave {type(line).__name__} {_excerpt(line)}; a line must be an object"
            )
    line = {**line, "idempotency_key": item.idempotency_key}
    try:
        return orjson.dumps(line) + b"\n"  # the hot path: several times faster than json
    except TypeError:  # what orjson does not take (integers beyond 64 bits): as json writes it
        return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _excerpt(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:39] + "…"


def _keys_of(lines: Iterable[bytes]) -> Iterable[str]:
    for line in lines:
        try:
            key = json.loads(line).get("idempotency_key")
        except (ValueError, AttributeError):
            continue  # not ours (e.g. zeros after a machine crash); it holds no record
        if isinstance(key, str):
            yield key


class FileDestination:
    """Appends records to a JSON-lines file, never the same record twice."""

    def __init__(self, config: FileConfig) -> None:
        self.config = config
        self._line = None if config.line is None else Expression(config.line, "line")
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._read_to = 0  # end of the last complete line this instance has read
        self._seen: set[str] = set()
        # flock does not exclude threads sharing a descriptor; a thread lock (not an asyncio
        # one) also holds when a cancelled write's thread is still running.
        self._lock = threading.Lock()

    async def open(self) -> None:
        """Create the file (and its directories) and learn the keys already in it."""
        await asyncio.to_thread(self._open_sync)

    async def close(self) -> None:
        """Close the file (after a write still running in its thread)."""
        await asyncio.to_thread(self._close_sync)

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        """Append the records not yet in the file; return e.g. ``1 line written``."""
        if self._fd is None:
            raise RuntimeError("FileDestination.write() called before open()")
        lines = [self._record_line(item) for item in batch]  # map before taking the lock
        await pace(len(batch))
        try:
            written = await asyncio.to_thread(self._write_sync, batch, lines)
        except OSError as err:
            raise RetryableExportError(f"cannot write {self.config.path}: {err}") from err
        present = len(batch) - written
        detail = f"{written} line{'' if written == 1 else 's'} written"
        if present and not written:
            return f"{detail} (already present)"
        if present:
            return f"{detail}, {present} already present"
        return detail

    def _record_line(self, item: OutgoingRecord) -> bytes:
        try:
            return record_line(item, self._line)
        except MappingError as err:
            r = item.record
            raise PermanentExportError(
                f"{r.topic}/{r.partition}/{r.offset}: {err.reason}", reached=False
            ) from err

    def preview(self, item: OutgoingRecord) -> dict[str, object]:
        """The line this record would get, without writing it (``courier map``)."""
        return {"path": str(self.config.path), "line": record_line(item, self._line).decode()}

    # Everything below runs in a worker thread.

    def _open_sync(self) -> None:
        path = self.config.path
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if created:
            _fsync_dir(path.parent)
        self._fd = fd
        st = os.fstat(fd)
        self._inode = (st.st_dev, st.st_ino)
        self._read_to = 0
        with _flock(fd):
            self._catch_up(fd)

    def _write_sync(self, batch: Sequence[OutgoingRecord], lines: Sequence[bytes]) -> int:
        with self._lock:
            while True:
                fd = self._fd
                assert fd is not None
                with _flock(fd):
                    if self._still_at_path():
                        return self._append_unseen(fd, batch, lines)
                self._reopen()

    def _append_unseen(
        self, fd: int, batch: Sequence[OutgoingRecord], all_lines: Sequence[bytes]
    ) -> int:
        self._catch_up(fd)
        lines: list[bytes] = []
        keys: set[str] = set()
        for item, line in zip(batch, all_lines, strict=True):
            if item.idempotency_key in self._seen or item.idempotency_key in keys:
                continue
            keys.add(item.idempotency_key)
            lines.append(line)
        if lines:
            data = b"".join(lines)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.config.fsync == "always":
                os.fsync(fd)
            self._read_to += len(data)
            self._seen.update(keys)
        return len(lines)

    def _catch_up(self, fd: int) -> None:
        """Cut a partial last line, then read lines appended since ``_read_to`` (lock held)."""
        size = os.fstat(fd).st_size
        if size < self._read_to:  # truncated by someone else: learn the file afresh
            self._read_to = 0
        pending = b""
        offset = self._read_to
        while offset < size:
            chunk = os.pread(fd, min(_READ_CHUNK, size - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            self._seen.update(_keys_of(lines))
        complete_end = offset - len(pending)
        if pending:
            os.ftruncate(fd, complete_end)
        self._read_to = complete_end

    def _close_sync(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _still_at_path(self) -> bool:
        try:
            st = os.stat(self.config.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    def _reopen(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._open_sync()


class _flock:
    """Context manager holding an exclusive ``flock`` on a descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
