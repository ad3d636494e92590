"""Courier's log setup: repeat summaries, text and JSON lines, handlers, third-party levels."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from courier.core import logs
from courier.core.logs import JsonFormatter, Summarizer, TextFormatter


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Capture(logging.Handler):
    """Keeps the formatted lines it emits."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def record(
    msg: str,
    *args: object,
    name: str = "aiokafka",
    level: int = logging.ERROR,
    **extra: object,
) -> logging.LogRecord:
    made = logging.makeLogRecord(
        {"name": name, "levelno": level, "levelname": logging.getLevelName(level), "msg": msg}
    )
    made.args = args or None
    made.__dict__.update(extra)
    return made


@pytest.fixture
def summarized() -> tuple[Summarizer, Capture, Clock]:
    clock = Clock()
    summarizer = Summarizer(30.0, clock=clock)
    capture = Capture()
    summarizer.attach(capture)
    return summarizer, capture, clock


def test_first_line_passes_then_one_summary_per_window_with_the_count(
    summarized: tuple[Summarizer, Capture, Clock],
) -> None:
    summarizer, capture, clock = summarized
    for node in range(1300):  # aiokafka while Kafka is down: ~1,300 errors in 19 s
        clock.now += 19 / 1300
        capture.handle(record("Unable connect to node with id %s: %s", node, "refused"))
    assert capture.lines == ["Unable connect to node with id 0: refused"]
    clock.now += 11.1  # the window (30 s since the first line) ends
    summarizer.flush()
    assert capture.lines[1] == (
        "Unable connect to node with id 1299: refused (repeated 1299 times in the last 30s)"
    )
    clock.now += 31  # a window without repeats: nothing to say, and the cause is forgotten
    summarizer.flush()
    assert len(capture.lines) == 2
    capture.handle(record("Unable connect to node with id %s: %s", 1, "refused"))
    assert capture.lines[2] == "Unable connect to node with id 1: refused"


def test_at_most_one_line_per_cause_per_window_while_it_lasts(
    summarized: tuple[Summarizer, Capture, Clock],
) -> None:
    summarizer, capture, clock = summarized
    for _ in range(600):  # ten minutes of one failure per second
        capture.handle(record("Unable to update metadata from %s", [1]))
        clock.now += 1
        summarizer.flush()
    assert len(capture.lines) == 21  # the first line, then one summary every 30 s
    assert capture.lines[1].endswith("(repeated 29 times in the last 30s)")
    assert all(line.endswith("(repeated 30 times in the last 30s)") for line in capture.lines[2:])


def test_causes_are_logger_template_exception_and_destination(
    summarized: tuple[Summarizer, Capture, Clock],
) -> None:
    _, capture, _ = summarized
    capture.handle(record("starting %s failed; retrying", "wf-1", name="courier.ingest"))
    capture.handle(record("starting %s failed; retrying", "wf-2", name="courier.ingest"))
    capture.handle(record("starting %s failed; retrying", "wf-3", name="courier.other"))
    capture.handle(record("cannot open %s", "a", destination="a", name="courier.worker"))
    capture.handle(record("cannot open %s", "b", destination="b", name="courier.worker"))
    capture.handle(record("cannot open %s", "b", destination="b", name="courier.worker"))
    # Preformatted messages (the Temporal core's) group with their digits blurred.
    capture.handle(record("gRPC call poll retried 6 times", name="temporalio.core"))
    capture.handle(record("gRPC call poll retried 7 times", name="temporalio.core"))
    assert capture.lines == [
        "starting wf-1 failed; retrying",
        "starting wf-3 failed; retrying",
        "cannot open a",
        "cannot open b",
        "gRPC call poll retried 6 times",
    ]


def test_info_and_debug_lines_are_never_held_back(
    summarized: tuple[Summarizer, Capture, Clock],
) -> None:
    _, capture, _ = summarized
    for _ in range(3):
        capture.handle(record("partitions assigned: %s", ["t/0"], level=logging.INFO))
    assert len(capture.lines) == 3


def test_force_flush_says_what_was_held_back_at_exit(
    summarized: tuple[Summarizer, Capture, Clock],
) -> None:
    summarizer, capture, clock = summarized
    for _ in range(5):
        capture.handle(record("Heartbeat failed: %r", "x"))
        clock.now += 2
    summaries = summarizer.flush(force=True)
    assert capture.lines[-1] == "Heartbeat failed: 'x' (repeated 4 times in the last 10s)"
    assert summaries[0].repeated == 4 and summaries[0].window_s == 10  # type: ignore[attr-defined]


def test_a_summary_drops_the_traceback(summarized: tuple[Summarizer, Capture, Clock]) -> None:
    summarizer, capture, _ = summarized
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    capture.handle(record("hand-off failed", exc_info=exc_info))
    capture.handle(record("hand-off failed", exc_info=exc_info))
    (summary,) = summarizer.flush(force=True)
    assert summary.exc_info is None and summary.getMessage().startswith("hand-off failed (")


def test_json_lines_carry_the_known_fields() -> None:
    line = record(
        "cannot export %s",
        "orders/0/17",
        name="courier.worker",
        level=logging.WARNING,
        topic="orders",
        partition=0,
        offset=17,
        destination="orders-api",
        unrelated=object(),
    )
    line.created = 1_767_225_600.5  # 2026-01-01T00:00:00.500Z
    parsed = json.loads(JsonFormatter().format(line))
    assert parsed == {
        "timestamp": "2026-01-01T00:00:00.500Z",
        "level": "WARNING",
        "logger": "courier.worker",
        "message": "cannot export orders/0/17",
        "topic": "orders",
        "partition": 0,
        "offset": 17,
        "destination": "orders-api",
    }


def test_json_lines_take_temporal_details_tracebacks_and_summary_counts() -> None:
    try:
        raise RuntimeError("line one\nline two")
    except RuntimeError:
        exc_info = sys.exc_info()
    line = record(
        "failed",
        name="temporalio.activity",
        temporal_activity={"workflow_id": "wf-1", "task_queue": "q", "attempt": 3},
        exc_info=exc_info,
        repeated=12,
        window_s=30,
    )
    text = JsonFormatter().format(line)
    assert "\n" not in text
    parsed = json.loads(text)
    assert parsed["workflow_id"] == "wf-1" and parsed["task_queue"] == "q"
    assert parsed["repeated"] == 12 and parsed["window_s"] == 30
    assert "RuntimeError: line one" in parsed["exception"]


def test_text_lines_are_plain_and_unwrapped() -> None:
    long = "the server at 127.0.0.1:5432 is not a Kafka server " + "x" * 200 + " [a, b]"
    line = record("%s", long, name="courier.ingest", level=logging.WARNING)
    line.created = 1_767_225_600.0
    text = TextFormatter().format(line)
    assert text == f"2026-01-01T00:00:00.000Z WARNING courier.ingest: {long}"
    assert "\x1b" not in text


def test_text_continuation_lines_are_indented() -> None:
    text = TextFormatter().format(record("first\nsecond"))
    assert text.endswith(": first\n    second")


def test_handlers_by_format_and_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain = logs.make_handler(io.StringIO(), "text")
    assert isinstance(plain.formatter, TextFormatter)
    assert isinstance(logs.make_handler(Tty(), "json").formatter, JsonFormatter)
    from rich.logging import RichHandler

    assert isinstance(logs.make_handler(Tty(), "text"), RichHandler)


def test_setup_logging_one_handler_library_levels_and_summaries() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup_logging("DEBUG", "json", stream=stream)
        assert logging.getLogger("httpx").level == logging.WARNING
        assert logging.getLogger("aiokafka").level == logging.WARNING
        assert logging.getLogger("temporalio.activity").level == logging.ERROR
        logging.getLogger("httpx").info("HTTP Request: GET http://x 200 OK")
        for _ in range(3):
            logging.getLogger("aiokafka").error("Unable to update metadata from %s", [1])
        logging.getLogger("courier").debug("debug shows")
        logs.flush_summaries()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["message"] for line in lines] == [
            "Unable to update metadata from [1]",
            "debug shows",
            "Unable to update metadata from [1] (repeated 2 times in the last 1s)",
        ]
        with pytest.raises(ValueError, match="unknown log level"):
            logs.setup_logging("LOUD", stream=stream)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
