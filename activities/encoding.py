"""The one JSON envelope of a record, shared by every destination that writes JSON.

::

    {"topic": "orders", "topic_id": "Fw0ygiNXSnSO1Fhrqe3sDw", "partition": 0, "offset": 17,
     "timestamp_ms": 1700000000000,
     "key": "order-17", "key_encoding": "text",
     "value": {"total": 12}, "value_encoding": "json",
     "headers": [{"name": "trace", "value": "abc", "value_encoding": "text"}]}

``*_encoding`` says how to read the field next to it: ``json`` (the value was JSON and is
embedded as such; values only), ``text`` (UTF-8 text) or ``base64`` (bytes that are not UTF-8).
A null key or value has no encoding field. A key or value read by its topic's format
(``kafka.formats``, see ``activities.formats``) is a :class:`DecodedBlob`: the envelope carries
what it decoded to (``json`` for Avro and JSON Schema, ``json``/``text``/``base64`` for the plain
formats). The REST ``json`` body and the file sink's lines are
this envelope; the PostgreSQL sink stores its ``headers`` list, built with ``nul_as_base64``:
there text containing NUL (which PostgreSQL text and jsonb cannot hold) is ``base64`` too, and
a header name containing NUL is base64 with ``"name_encoding": "base64"``.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from workflows.types import Blob, KafkaRecord


@dataclass(frozen=True)
class DecodedBlob(Blob):
    """A key or value decoded by its topic's format: ``data`` is what the envelope and
    mappings see, read as ``encoding``; ``text``/``base64`` keep the original bytes."""

    data: Any = None
    encoding: str = "json"


def as_read(blob: Blob | None) -> Blob | None:
    """The blob as its format reads it: a :class:`DecodedBlob` becomes the JSON text, text or
    base64 it decoded to (for a sink that stores text, e.g. a PostgreSQL column); any other
    blob stays as it is."""
    if not isinstance(blob, DecodedBlob):
        return blob
    if blob.encoding == "json":
        return Blob(json.dumps(blob.data, ensure_ascii=False))
    return Blob(str(blob.data), base64=blob.encoding == "base64")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"{text} is beyond a double")
    return number


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
"""One decoder for every parse (``json.loads`` with hooks builds a new one per call)."""


def parse_json_text(text: str) -> tuple[bool, Any]:
    """Parse strict JSON; return ``(True, value)`` or ``(False, None)``.

    Not JSON here: NaN/Infinity, numbers a double cannot hold (they would come out as
    ``Infinity``) and nesting deeper than Python's recursion limit.
    """
    try:
        return True, _DECODER.decode(text)
    except (ValueError, RecursionError):
        return False, None


def blob_field(
    name: str, blob: Blob | None, *, embed_json: bool = False, nul_as_base64: bool = False
) -> dict[str, Any]:
    """``{name: …, name_encoding: …}`` for a blob; ``{name: None}`` for a null one.

    With ``nul_as_base64``, text containing NUL is given as ``base64`` too.
    """
    if blob is None:
        return {name: None}
    if isinstance(blob, DecodedBlob):
        return {name: blob.data, f"{name}_encoding": blob.encoding}
    if blob.base64:
        return {name: blob.text, f"{name}_encoding": "base64"}
    if nul_as_base64 and "\0" in blob.text:
        return {name: _base64(blob.text), f"{name}_encoding": "base64"}
    if embed_json:
        parsed, data = parse_json_text(blob.text)
        if parsed:
            return {name: data, f"{name}_encoding": "json"}
    return {name: blob.text, f"{name}_encoding": "text"}


def headers_list(record: KafkaRecord, *, nul_as_base64: bool = False) -> list[dict[str, Any]]:
    """The record's headers as envelope entries, in order.

    With ``nul_as_base64``, names and values containing NUL are given base64-encoded.
    """
    entries = []
    for h in record.headers:
        name: dict[str, Any] = {"name": h.name}
        if nul_as_base64 and "\0" in h.name:
            name = {"name": _base64(h.name), "name_encoding": "base64"}
        entries.append({**name, **blob_field("value", h.value, nul_as_base64=nul_as_base64)})
    return entries


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def record_envelope(record: KafkaRecord) -> dict[str, Any]:
    """The envelope of a record (see the module docstring)."""
    return {
        "topic": record.topic,
        "topic_id": record.topic_id,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        **blob_field("key", record.key),
        **blob_field("value", record.value, embed_json=True),
        "headers": headers_list(record),
    }
