"""``kind: json-files``: each record as one JSON file in a directory, named after its identity.

An example of a destination kind from a plugin package (docs/plugins.md): the config model
(:class:`JsonFilesConfig`, the entry point's target) and the destination it creates
(:class:`JsonFilesDestination`). It imports from Courier only what a plugin may rely on:
``activities.base`` (config base, pace), ``activities.errors`` (retry or fail) and
``activities.encoding`` (the record envelope).

Why a record is never written twice: its file is named after its idempotency key and written
whole under a temporary name, then renamed. A retry of a write that was done (or half done)
writes the same name again, so the directory holds one file per record whatever happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from activities.base import DeploymentNeeds, DestinationConfig, Pace, no_pace
from activities.encoding import record_envelope
from activities.errors import PermanentExportError, RetryableExportError
from workflows.types import OutgoingRecord


class JsonFilesConfig(DestinationConfig):
    """A directory with one JSON file per record (the record envelope and its identity)."""

    kind: Literal["json-files"] = Field(description="Always `json-files`.")
    directory: Path = Field(description="Directory the files are written to; created if missing.")
    max_bytes: int = Field(
        default=1_000_000,
        ge=100,
        description="A record whose file would be larger fails for good, without being written.",
    )

    def create(self) -> JsonFilesDestination:
        """The destination this config describes (not yet opened)."""
        return JsonFilesDestination(self)

    def deployment_needs(self) -> DeploymentNeeds:
        """The directory outlives a worker; it is on a volume that one pod mounts."""
        return DeploymentNeeds(
            single_writer=True,
            data_dirs=(self.directory,),
            why="its directory is on a ReadWriteOnce volume",
        )

    @classmethod
    def describe_preview(cls, shown: Mapping[str, Any]) -> list[str]:
        """The file a record would become, and what it would hold (``courier map``)."""
        return [f"# written to {shown['file']}", shown["content"]]


def file_name(idempotency_key: str) -> str:
    """The name of a record's file: its idempotency key, hashed (the key holds ``/``)."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:40] + ".json"


def content(item: OutgoingRecord) -> str:
    """What a record's file holds: the envelope every JSON-writing kind uses, and its key."""
    return json.dumps({**record_envelope(item.record), "idempotency_key": item.idempotency_key})


class JsonFilesDestination:
    """Writes each record to ``<directory>/<file_name(key)>``, atomically."""

    def __init__(self, config: JsonFilesConfig) -> None:
        self.config = config
        self._opened = False

    async def open(self) -> None:
        """Create the directory; a failure here is retried by the worker (with backoff)."""
        try:
            await asyncio.to_thread(self.config.directory.mkdir, parents=True, exist_ok=True)
        except OSError as err:
            raise RetryableExportError(
                f"cannot create {self.config.directory}: {err.strerror}", cause="unavailable"
            ) from err
        self._opened = True

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        """Write every record's file; return e.g. ``3 files written``."""
        if not self._opened:
            raise RuntimeError("JsonFilesDestination.write() called before open()")
        files = [(item, content(item)) for item in batch]
        for item, text in files:
            if len(text.encode()) > self.config.max_bytes:
                # Retrying cannot make it smaller. reached=False: nothing was sent, so this says
                # nothing about the directory's health (rate control does not count it).
                r = item.record
                raise PermanentExportError(
                    f"{r.topic}/{r.partition}/{r.offset} needs {len(text.encode())} bytes, over "
                    f"max_bytes {self.config.max_bytes}",
                    reached=False,
                )
        await pace(len(batch))  # one bulk write: wait once for the whole batch
        written: list[str] = []
        try:
            for item, text in files:
                await asyncio.to_thread(self._write_file, file_name(item.idempotency_key), text)
                written.append(item.idempotency_key)
        except OSError as err:
            # A full disk or a volume gone: worth retrying. Those already written need not be
            # sent again (they would only be rewritten, the same).
            error = RetryableExportError(
                f"cannot write to {self.config.directory}: {err.strerror}", cause="unavailable"
            )
            error.confirmed = frozenset(written)
            raise error from err
        return f"{len(written)} file{'s' if len(written) != 1 else ''} written"

    async def close(self) -> None:
        """Nothing is held open between writes."""
        self._opened = False

    def preview(self, item: OutgoingRecord) -> dict[str, object]:
        """The file this record would become, without writing it (``courier map``)."""
        path = self.config.directory / file_name(item.idempotency_key)
        return {"file": str(path), "content": content(item)}

    def _write_file(self, name: str, text: str) -> None:
        final = self.config.directory / name
        temporary = final.with_name(f".{name}.{uuid.uuid4().hex}.tmp")  # one per attempt
        try:
            with temporary.open("w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, final)  # atomic: a reader sees no file or the whole file
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
