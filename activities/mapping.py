"""Mappings: JSONata expressions that shape what a destination receives.

A mapping is a `JSONata <https://jsonata.org>`_ expression, evaluated by ``jsonatapy`` (a Rust
implementation of the language; docs/mappings.md says why). It sees one record as data
(:func:`record_data`)::

    {"key": "order-17", "key_encoding": "text",
     "value": {"id": 17, "total": 12.5}, "value_encoding": "json",
     "headers": {"trace": "abc"},
     "topic": "orders", "topic_id": "Fw0y…", "partition": 0, "offset": 17,
     "timestamp": "2026-11-27T12:00:00.000Z", "timestamp_ms": 1795780800000,
     "idempotency_key": "courier/…"}

``value`` is the parsed JSON when the value is JSON, else its text (``value_encoding: text``)
or base64 (``base64``); the key likewise (never parsed). A header's value is its text (or
base64); a name given more than once holds the list of its values.

Two forms use expressions:

- :class:`Expression`: one expression whose result is data (a REST body, a file line, a
  column);
- :class:`Template`: text with ``{expression}`` pieces (a URL, a header, a text body); write a
  literal brace as ``{{`` or ``}}``.

Expressions compile when the config is validated (a syntax error is a config error naming the
field) and once per worker. One that fails for one record (a wrong type, a missing field where
a value is required, a runaway loop) raises :class:`MappingError`, which fails only that
record's export, with a reason naming the field and the expression.
"""

from __future__ import annotations

import difflib
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import jsonatapy

from activities.encoding import DecodedBlob, parse_json_text
from activities.jsonata_paths import Read, record_reads
from workflows.types import Blob, OutgoingRecord

TIMEOUT_MS = 1000
"""Longest one evaluation may run; guards the worker against a runaway expression."""
MAX_STACK_DEPTH = 200
"""Deepest recursion an expression may use."""
MAX_SEQUENCE_LENGTH = 100_000
"""Longest sequence (array) an expression may build, e.g. with a range ``[1..n]``."""
_SHOWN_CHARS = 80
RECORD_FIELDS = (
    "key",
    "key_encoding",
    "value",
    "value_encoding",
    "headers",
    "topic",
    "topic_id",
    "partition",
    "offset",
    "timestamp",
    "timestamp_ms",
    "idempotency_key",
)
"""The top-level fields of :func:`record_data`."""
# Used only for an expression the path parser cannot read (jsonatapy compiled it).
_LEADING_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:$|[.\[&=!<>+*/%-])")


class MappingError(Exception):
    """A mapping failed for one record; ``reason`` names the field and the expression."""

    def __init__(self, field: str, expression: str, problem: str) -> None:
        self.field = field
        self.expression = expression
        self.reason = f"{field}: mapping {shorten(expression)} {problem}"
        super().__init__(self.reason)


def shorten(expression: str) -> str:
    """The expression quoted for a message, on one line and cut to a readable length."""
    text = " ".join(expression.split())
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 1] + "…"
    return f"`{text}`"


def _describe_error(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.removeprefix("Parse error: ")


_COMPILED: dict[tuple[int, str], Any] = {}


def _compiled(text: str) -> Any:
    """The compiled expression for this thread, compiled on first use.

    jsonatapy's compiled expressions must be used and freed on the thread that made them, so
    they are kept here per thread (for the process's life) rather than in the objects that
    use them, which any thread may free.
    """
    key = (threading.get_ident(), text)
    found = _COMPILED.get(key)
    if found is None:
        found = _COMPILED[key] = jsonatapy.compile(
            text,
            timeout=TIMEOUT_MS,
            max_stack_depth=MAX_STACK_DEPTH,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
    return found


class Expression:
    """One compiled JSONata expression, belonging to a config field (for messages)."""

    def __init__(self, text: str, field: str) -> None:
        if not text.strip():
            raise ValueError("the mapping is empty")
        try:
            # The module's table keeps it alive, so freeing this object frees no jsonatapy
            # object on another thread; the reference saves the lookup on the owning thread.
            self._compiled = _compiled(text)
            self._owner = threading.get_ident()
        except Exception as err:  # ValueError for syntax errors; anything else is one too
            raise ValueError(
                f"mapping {shorten(text)} does not compile: {_describe_error(err)}"
            ) from None
        unknown = unknown_reads(text)
        if unknown:
            raise ValueError(f"mapping {shorten(text)} {describe_unknown(unknown)}")
        self.text = text
        self.field = field

    def evaluate(self, data: dict[str, Any]) -> Any:
        """The result for one record (None when the expression yields nothing)."""
        try:
            compiled = (
                self._compiled if threading.get_ident() == self._owner else _compiled(self.text)
            )
            return compiled.evaluate(data)
        except Exception as err:  # ValueError (JSONata errors), TypeError (e.g. huge ints)
            raise MappingError(self.field, self.text, f"failed: {_describe_error(err)}") from err

    def require(self, data: dict[str, Any]) -> Any:
        """The result for one record; MappingError when it is nothing (missing or null)."""
        result = self.evaluate(data)
        if result is None:
            raise self.error("produced nothing: a field it reads is missing or null")
        return result

    def error(self, problem: str) -> MappingError:
        """A MappingError about this expression's result."""
        return MappingError(self.field, self.text, problem)


def unknown_reads(text: str) -> list[Read]:
    """The names ``text`` reads from the record that a record does not have (each name once)."""
    try:
        reads = record_reads(text)
    except ValueError:  # syntax the path parser does not know: check the leading name only
        leading = _LEADING_NAME.match(text)
        reads = [Read(leading.group(1), leading.start(1))] if leading else []
    unknown: dict[str, Read] = {}
    for read in reads:
        if read.name not in RECORD_FIELDS and read.name not in ("true", "false", "null"):
            unknown.setdefault(read.name, read)
    return list(unknown.values())


def describe_unknown(unknown: list[Read]) -> str:
    """What is wrong with an expression reading these names, e.g. "reads 'vlaue' (did you mean
    'value'?), which a record does not have; its fields are key, …"."""
    parts = []
    for read in unknown:
        notes = []
        if read.key is not None:
            notes.append(f'for "{read.key}"')
        close = difflib.get_close_matches(read.name, RECORD_FIELDS, n=1)
        if close:
            notes.append(f"did you mean {close[0]!r}?")
        if read.as_key:
            notes.append(f'as an object key, which is an expression: write "{read.name}" for text')
        parts.append(f"{read.name!r}" + (f" ({'; '.join(notes)})" if notes else ""))
    names = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"reads {names}, which a record does not have; its fields are {', '.join(RECORD_FIELDS)}"


def check_mappings(destination: str, fields: dict[str, tuple[str, str]]) -> None:
    """Compile a destination's mappings; ValueError naming the destination and the field.

    ``fields`` maps a config field (``body.mapping``) to ``(form, text)`` with form
    ``expression`` or ``template``.
    """
    for field, (form, text) in fields.items():
        try:
            if form == "template":
                _check_pieces(Template(text, field))
            else:
                Expression(text, field)
        except ValueError as err:
            raise ValueError(f"destination {destination}, {field}: {err}") from None


def _check_pieces(template: Template) -> None:
    """A piece that gives an object or a list whatever the record (e.g. ``{"a": 1}``, literal
    JSON meant as text) would fail every record: say so now."""
    for piece in template.expressions:
        try:
            result = piece.evaluate({})
        except MappingError:
            continue  # depends on the record
        if isinstance(result, dict | list):
            kind = "an object" if isinstance(result, dict) else "a list"
            raise ValueError(
                f"the piece {{{piece.text}}} gives {kind} for every record, and a piece must "
                "give text or a number; write literal braces as {{ and }}"
            )


def piece_text(value: Any, expression: Expression) -> str:
    """A template piece's result as text: strings as they are, numbers and booleans as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    kind = "an object" if isinstance(value, dict) else "a list"
    raise expression.error(f"produced {kind}; a template piece must give text or a number")


class Template:
    """Text with ``{expression}`` pieces; ``{{`` and ``}}`` are literal braces."""

    def __init__(self, text: str, field: str) -> None:
        self.text = text
        self.parts: list[str | Expression] = []
        literal: list[str] = []
        i = 0
        while i < len(text):
            char = text[i]
            if char in "{}" and text[i : i + 2] == char * 2:
                literal.append(char)
                i += 2
            elif char == "}":
                raise ValueError(f"unmatched '}}' at position {i + 1}; write a literal }} as }}}}")
            elif char == "{":
                end = _closing_brace(text, i)
                if literal:
                    self.parts.append("".join(literal))
                    literal = []
                try:
                    self.parts.append(Expression(text[i + 1 : end], field))
                except ValueError as err:
                    raise ValueError(f"{err} (literal braces are written {{{{ and }}}})") from None
                i = end + 1
            else:
                literal.append(char)
                i += 1
        if literal:
            self.parts.append("".join(literal))

    @property
    def expressions(self) -> list[Expression]:
        """The template's expressions, in order."""
        return [p for p in self.parts if isinstance(p, Expression)]

    def render(
        self,
        data: dict[str, Any],
        escape: Callable[[str], str] = str,
        *,
        empty_if_null: frozenset[str] = frozenset(),
    ) -> str:
        """The text for one record; each piece's result goes through ``escape``.

        A piece that yields nothing fails the record, except an expression listed in
        ``empty_if_null`` (e.g. ``key``: a null key gives an empty piece).
        """
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part.evaluate(data)
            if value is None and part.text.strip() in empty_if_null:
                continue
            if value is None:
                raise part.error("produced nothing: a field it reads is missing or null")
            out.append(escape(piece_text(value, part)))
        return "".join(out)

    def sample(self, filler: str = "x") -> str:
        """The text with every piece replaced by ``filler``, to check the literal parts."""
        return "".join(p if isinstance(p, str) else filler for p in self.parts)


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the piece opened at ``start`` (braces in strings ignored)."""
    depth = 0
    quote: str | None = None
    i = start
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"'{{' at position {start + 1} is never closed; write a literal {{ as {{{{")


def _blob_data(blob: Blob | None, *, parse_json: bool) -> tuple[Any, str | None]:
    if blob is None:
        return None, None
    if isinstance(blob, DecodedBlob):
        return blob.data, blob.encoding
    if blob.base64:
        return blob.text, "base64"
    if parse_json:
        parsed, data = parse_json_text(blob.text)
        if parsed:
            return data, "json"
    return blob.text, "text"


def timestamp_text(timestamp_ms: int) -> str | None:
    """A Kafka timestamp as ISO 8601 UTC with milliseconds; None for "no timestamp" (-1) and
    for a timestamp beyond what a calendar date can show."""
    if timestamp_ms < 0:
        return None
    seconds, millis = divmod(timestamp_ms, 1000)
    try:
        when = time.gmtime(seconds)
    except (OverflowError, OSError, ValueError):
        return None
    if when.tm_year > 9999:
        return None
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', when)}.{millis:03d}Z"


def record_data(item: OutgoingRecord) -> dict[str, Any]:
    """The record as a mapping sees it (see the module docstring)."""
    r = item.record
    key, key_encoding = _blob_data(r.key, parse_json=False)
    value, value_encoding = _blob_data(r.value, parse_json=True)
    headers: dict[str, Any] = {}
    for header in r.headers:
        text, _ = _blob_data(header.value, parse_json=False)
        if header.name not in headers:
            headers[header.name] = text
        elif isinstance(headers[header.name], list):
            headers[header.name].append(text)
        else:
            headers[header.name] = [headers[header.name], text]
    return {
        "key": key,
        "key_encoding": key_encoding,
        "value": value,
        "value_encoding": value_encoding,
        "headers": headers,
        "topic": r.topic,
        "topic_id": r.topic_id,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": timestamp_text(r.timestamp_ms),
        "timestamp_ms": r.timestamp_ms,
        "idempotency_key": item.idempotency_key,
    }
