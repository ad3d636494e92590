"""Courier's logs: one line per event, text for people or JSON for machines.

:func:`setup_logging` is the one place that decides how the process logs (the CLI calls it):

- **Handler.** On a terminal, rich's handler (colours, wrapped to the terminal's width). Anywhere
  else (a file, a pipe, a container's log), plain lines with no ANSI codes and no wrapping:
  ``2026-01-31T12:00:00.123Z WARNING courier.ingest: message``.
- **Format.** ``text`` (the default) or ``json``: one JSON object per line with ``timestamp``
  (ISO 8601, UTC), ``level``, ``logger`` and ``message``, plus these fields when known:

  ``topic``, ``partition``, ``offset``
      the Kafka record (or range) the line is about;
  ``destination``
      the destination's name;
  ``record``
      the record's coordinates as one string, ``topic/partition/offset``;
  ``workflow_id``, ``task_queue``
      the Temporal workflow or queue the line is about;
  ``repeated``, ``window_s``
      on a summary line: how many lines like it were held back, over how many seconds;
  ``exception``
      the traceback, when one was logged.

  Pass them as ``log.warning("...", extra={"destination": name, "topic": t, ...})``; Temporal's
  activity and workflow loggers fill ``workflow_id`` and ``task_queue`` themselves.
- **Repeated failures are summarised.** A WARNING or worse whose logger and message template
  (the format string, not its arguments; for a record's ``destination`` extra, per
  destination) were seen in the last :data:`SUMMARY_WINDOW_S` seconds is held back and
  counted; once the window ends one line says ``… (repeated N times in the last 30s)``, at
  most once per window per cause. So an outage of a minute is a few lines, not thousands.
- **Third-party loggers** (aiokafka, temporalio, httpx) log warnings and errors only.

This module imports the standard library and rich only, no Courier module (``test_layers``
places it with the configuration, layer 3, so ingest, workers and the CLI may use it).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TextIO

from rich.console import Console
from rich.logging import RichHandler

LogFormat = Literal["text", "json"]

SUMMARY_WINDOW_S = 30.0
"""Lines of one cause (logger and template) let through at most once per this many seconds."""

FIELDS = ("topic", "partition", "offset", "destination", "record", "workflow_id", "task_queue")
"""``extra`` fields a JSON line carries when the log call passes them (see the module doc)."""

THIRD_PARTY_LEVELS = {
    "aiokafka": logging.WARNING,
    "temporalio": logging.WARNING,
    # Failed attempts are logged by activities.export in one line; skip the SDK's traceback.
    "temporalio.activity": logging.ERROR,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "asyncio": logging.WARNING,
}
"""Minimum levels of libraries' loggers: what an operator needs, not their chatter."""

_TEMPORAL_EXTRAS = ("temporal_activity", "temporal_workflow")
_DIGITS = re.compile(r"\d+")


def _template(record: logging.LogRecord) -> str:
    """The record's message before its arguments; digits blurred where there are none.

    Messages formatted before logging (the Temporal core's, f-strings) carry their variable
    parts inline; blurring the digits groups "retried 6 times" with "retried 7 times".
    """
    template = str(record.msg)
    return template if record.args else _DIGITS.sub("#", template)


def summary_key(record: logging.LogRecord) -> tuple[str, ...]:
    """What makes two log lines "the same cause": logger, template, exception, destination."""
    exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
    return (
        record.name,
        _template(record),
        exc_type,
        str(getattr(record, "destination", "")),
    )


@dataclass
class _Window:
    opened: float
    held: int = 0
    last: logging.LogRecord | None = field(default=None, repr=False)


class Summarizer(logging.Filter):
    """Lets the first line of a cause through, then one summary per window with a count.

    Attach it to a handler with :meth:`attach`; call :meth:`flush` regularly (the flusher
    thread of :func:`setup_logging` does it every second) so a window's summary goes out when
    the window ends even if the cause stopped, and at exit (``force=True``).
    """

    def __init__(
        self,
        window_s: float = SUMMARY_WINDOW_S,
        *,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.level = level
        self.clock = clock
        self._windows: dict[tuple[str, ...], _Window] = {}
        self._lock = threading.Lock()
        self._handler: logging.Handler | None = None

    def attach(self, handler: logging.Handler) -> None:
        """Filter ``handler``'s records and emit the summaries through it."""
        handler.addFilter(self)
        self._handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` goes out now (else it is counted for the window's summary)."""
        if record.levelno < self.level or getattr(record, "repeated", None) is not None:
            return True
        key = summary_key(record)
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or (now - window.opened >= self.window_s and not window.held):
                self._windows[key] = _Window(opened=now)
                return True
            window.held += 1
            window.last = record
        if now - window.opened >= self.window_s:
            self.flush()
        return False

    def flush(self, *, force: bool = False) -> list[logging.LogRecord]:
        """Emit the summary of every ended window (of every window with ``force``)."""
        now = self.clock()
        summaries = []
        with self._lock:
            for key, window in list(self._windows.items()):
                elapsed = now - window.opened
                if elapsed < self.window_s and not force:
                    continue
                if window.held and window.last is not None:
                    summaries.append(_summary(window.last, window.held, elapsed))
                    self._windows[key] = _Window(opened=now)
                elif elapsed >= self.window_s:
                    del self._windows[key]
        if self._handler is not None:
            for summary in summaries:
                self._handler.handle(summary)
        return summaries


def _summary(last: logging.LogRecord, held: int, elapsed_s: float) -> logging.LogRecord:
    """A copy of the last held-back record saying how many were held back."""
    record = logging.makeLogRecord(last.__dict__)
    window = max(1, round(elapsed_s))
    record.msg = f"{last.getMessage()} (repeated {held} times in the last {window}s)"
    record.args = None
    record.exc_info = None
    record.exc_text = None
    record.stack_info = None
    record.created = time.time()
    record.msecs = (record.created - int(record.created)) * 1000
    record.repeated = held
    record.window_s = window
    return record


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``<UTC time> <LEVEL> <logger>: <message>``; continuation lines indented."""

    def format(self, record: logging.LogRecord) -> str:
        """One record; a traceback follows on indented lines."""
        text = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text.replace("\n", "\n    ")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message and the known fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, object] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        for extra in _TEMPORAL_EXTRAS:  # what temporalio's activity/workflow loggers attach
            details = getattr(record, extra, None)
            if isinstance(details, dict):
                for name in ("workflow_id", "task_queue"):
                    if details.get(name) is not None:
                        line.setdefault(name, details[name])
        for name in ("repeated", "window_s"):
            if getattr(record, name, None) is not None:
                line[name] = getattr(record, name)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def make_handler(stream: TextIO, fmt: LogFormat = "text") -> logging.Handler:
    """The handler for ``stream``: rich on a terminal with text, plain lines otherwise."""
    if fmt == "json":
        handler: logging.Handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    elif is_terminal(stream):
        handler = RichHandler(
            console=Console(file=stream), show_path=False, rich_tracebacks=True, markup=False
        )
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(TextFormatter())
    return handler


class _Flusher(threading.Thread):
    def __init__(self, summarizer: Summarizer, interval_s: float = 1.0) -> None:
        super().__init__(name="courier-log-summaries", daemon=True)
        self.summarizer = summarizer
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.summarizer.flush()


_flusher: _Flusher | None = None


def setup_logging(
    level: str | int = "INFO",
    fmt: LogFormat = "text",
    *,
    stream: TextIO | None = None,
    window_s: float = SUMMARY_WINDOW_S,
) -> Summarizer:
    """Route every log record to one handler on ``stream`` (stderr), replacing earlier setups.

    Returns the handler's :class:`Summarizer`; :func:`flush_summaries` emits what it holds.
    """
    global _flusher
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    flush_summaries()
    if _flusher is not None:
        _flusher.stopped.set()
    handler = make_handler(stream if stream is not None else sys.stderr, fmt)
    summarizer = Summarizer(window_s)
    summarizer.attach(handler)
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    for name, minimum in THIRD_PARTY_LEVELS.items():
        logging.getLogger(name).setLevel(max(minimum, numeric))
    _flusher = _Flusher(summarizer)
    _flusher.start()
    return summarizer


def flush_summaries() -> None:
    """Emit every pending summary now (call before exiting)."""
    if _flusher is not None:
        _flusher.summarizer.flush(force=True)


REPEAT_LOG_S = 60.0
"""A repeated condition is logged at most once per this many seconds by default."""


class Throttle:
    """Says when a repeated condition is due to be logged again: at most once per ``every_s``
    seconds (thread-safe: the metrics server's threads use it too)."""

    def __init__(self, every_s: float = REPEAT_LOG_S) -> None:
        self.every_s = every_s
        self._last = -every_s
        self._lock = threading.Lock()

    def due(self, now: float | None = None) -> bool:
        """Whether the condition is to be logged now (and, if so, the clock restarts)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if now - self._last < self.every_s:
                return False
            self._last = now
            return True
