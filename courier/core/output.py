"""Where operator commands print: their result to stdout, one-line errors and warnings to stderr.

Every command in ``courier.ops`` that prints takes an :class:`Output` and returns its exit code
(0: done, 1: failed, 2: a usage error), so the CLI only parses arguments, calls it and exits
with the code; tests can pass consoles that record.
"""

from __future__ import annotations

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
