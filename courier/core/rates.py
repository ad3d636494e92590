"""How a rate limit reads in logs, tables and messages."""

from __future__ import annotations


def format_rate(records_per_second: float | None) -> str:
    """``5/s``, ``0.5/s``, or ``unlimited`` for no limit."""
    return "unlimited" if records_per_second is None else f"{records_per_second:g}/s"
