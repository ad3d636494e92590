"""`make bench` rewrites docs/benchmarks.md but keeps the sections others write."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import kept_sections

DOCS = Path(__file__).parents[2] / "docs" / "benchmarks.md"


def test_a_rewrite_keeps_the_isolation_section_and_the_notes() -> None:
    committed = DOCS.read_text()
    kept = kept_sections(committed)
    assert kept.startswith("\n<!-- isolation:start -->")
    assert "<!-- notes:start" in kept and kept.endswith("<!-- notes:end -->\n")
    assert "## Machine and versions" not in kept  # the suite's own part is written anew


def test_a_report_without_kept_sections_keeps_nothing() -> None:
    assert kept_sections("# Benchmarks\n\nonly the suite's part\n") == ""
