"""Where operator commands print: their result to stdout, one-line errors and warnings to stderr.

Every command in ``courier.ops`` that prints takes an :class:`Output` and returns its exit code
(0: done, 1: failed, 2: a usage error), so the CLI only parses arguments, calls it and exits
with the code; tests can pass consoles that record.

With ``--json`` a command writes one JSON document (an object) to stdout with
:meth:`Output.write_json`; its errors and warnings still go to stderr, one line each. Times in
JSON are ISO 8601 strings in UTC (:func:`iso_time`), durations numbers of seconds (keys ending
in ``_s``). The shapes are documented in ``docs/cli-json.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

from rich.console import Console
from rich.text import Text


class Output:
    """The consoles a command prints to: ``out`` (stdout) for results, ``err`` (stderr)."""

    def __init__(self, out: Console | None = None, err: Console | None = None) -> None:
        self.out = out or Console()
        self.err = err or Console(stderr=True, soft_wrap=True)
        """Errors and warnings: one line each, never wrapped, never read as rich markup."""

    def write(self, text: str) -> None:
        """Write ``text`` to stdout as it is (JSON, YAML, Markdown: no rich rendering)."""
        self.out.file.write(text)

    def write_json(self, document: Mapping[str, object]) -> None:
        """Write ``document`` to stdout as one indented JSON object (no markup, no wrapping)."""
        self.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")

    def error(self, message: str) -> None:
        """Print one ``error:`` line to stderr, exactly as given (no markup, no wrapping)."""
        self.err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)

    def warning(self, message: str) -> None:
        """Print one ``warning:`` line to stderr, exactly as given (no markup, no wrapping)."""
        self.err.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False)

    def fail(self, message: str, code: int = 1) -> int:
        """Print one ``error:`` line; return ``code`` for the command to exit with (2: usage)."""
        self.error(message)
        return code


def iso_time(value: datetime | float | None) -> str | None:
    """A time for JSON output: ISO 8601 in UTC to the millisecond, e.g.
    ``2026-12-07T09:15:00.250+00:00``; a float is Unix seconds; None stays None."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds")
