"""What courier status says about Temporal's retention of failed records."""

from __future__ import annotations

import time

from courier.config.model import CourierConfig, parse_config
from courier.ops.retention import failure_warnings, format_retention

DAY = 86400.0


def config(dead_letter: dict[str, object] | None = None) -> CourierConfig:
    return parse_config(
        {
            "kafka": {"topics": ["orders"], "group": "g"},
            "destinations": [
                {"name": "api", "kind": "rest", "url": "http://127.0.0.1:9/x"},
                {"name": "files", "kind": "file", "path": "/tmp/out.jsonl"},
            ],
            "routes": {"default": "api"},
            "dead_letter": dead_letter or {},
        },
        environ={},
    )


def test_failures_without_a_dead_letter_topic_are_warned_about() -> None:
    warnings = failure_warnings(config(), DAY, [("api", 3, time.time()), ("files", 0, None)])
    assert warnings == [
        "api: 3 failed record(s) and no dead-letter topic: Temporal forgets them after the "
        "namespace's retention (1d); set dead_letter.topic to keep them, then courier replay or "
        "skip them"
    ]


def test_failures_older_than_half_the_retention_are_warned_about_dead_letter_or_not() -> None:
    old = time.time() - 0.6 * DAY
    warnings = failure_warnings(config({"topic": "courier-dlq"}), DAY, [("api", 1, old)])
    assert len(warnings) == 1
    assert warnings[0].startswith("api: failed records since ")
    assert "over half the namespace's retention (1d) ago" in warnings[0]
    recent = failure_warnings(config({"topic": "courier-dlq"}), DAY, [("api", 1, time.time())])
    assert recent == []


def test_retention_in_words() -> None:
    assert [format_retention(s) for s in (DAY, 7 * DAY, 3600.0, 90.0, None)] == [
        "1d",
        "7d",
        "1h",
        "90s",
        "unknown",
    ]
