"""`make bench` rewrites docs/benchmarks.md but keeps the sections others write."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import CpuUsage, HistoryStats, Measurement
from benchmarks.report import PipelineResults, Report, TemporalDb, kept_sections, markdown
from benchmarks.suite import BY_NAME, parse_args

DOCS = Path(__file__).parents[2] / "docs" / "benchmarks.md"


def test_a_rewrite_keeps_the_isolation_section_and_the_notes() -> None:
    committed = DOCS.read_text()
    kept = kept_sections(committed)
    assert kept.startswith("\n<!-- isolation:start -->")
    assert "<!-- notes:start" in kept and kept.endswith("<!-- notes:end -->\n")
    assert "## Machine and versions" not in kept  # the suite's own part is written anew


def test_a_report_without_kept_sections_keeps_nothing() -> None:
    assert kept_sections("# Benchmarks\n\nonly the suite's part\n") == ""


N = 10_001
"""Records per synthetic run: (N - 1) / running_s gives round rates once running."""


def _results(
    name: str, spans: list[tuple[float, float]], in_process: float, temporal: float
) -> PipelineResults:
    """A pipeline's rounds: (end-to-end seconds, seconds once running) each, the same CPU."""
    runs = [
        Measurement(
            name,
            N,
            seconds,
            startup_s=seconds - running_s,
            running_s=running_s,
            cpu=CpuUsage({"harness+in-process": in_process, "temporal": temporal}, 50.0, seconds),
            history=HistoryStats(1, 1, N / 10, 2, 0, N) if name.startswith("courier-") else None,
        )
        for seconds, running_s in spans
    ]
    return PipelineResults(name, f"what {name} is", runs)


def _report() -> Report:
    return Report(
        results=[
            _results("kafka-connect-file", [(10.0, 1.0)], 0.1, 0.0),
            _results("courier-batch-file-500", [(6.0, 5.0)] * 3, 0.5, 2.0),
            _results("courier-batch-file-5000", [(3.0, 2.5), (2.0, 1.0), (4.0, 3.0)], 0.3, 1.0),
            PipelineResults("courier-batch-postgres", "pg", error="boom\nmore"),
        ],
        environment={"CPUs (nproc)": "2"},
        method=["how"],
        rounds=3,
        temporal_db=TemporalDb("fresh", 0.25, 12.5),
    )


def _row(text: str, name: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_throughput_table_has_rates_cost_per_record_and_the_ratio_to_connect() -> None:
    text = markdown(_report(), None).split("## Throughput")[1].split("\n## ")[0]
    header = _row(text.replace("| pipeline |", "| `pipeline` |"), "pipeline")
    assert header[3:6] == [
        "records/s once running (min / **median** / max)",
        "records/s end to end (min / **median** / max)",
        "once running ÷ Connect's (medians)",
    ]
    row = dict(zip(header, _row(text, "courier-batch-file-5000"), strict=True))
    assert row["records/s once running (min / **median** / max)"] == "3,333 / **4,000** / 10,000"
    assert row["records/s end to end (min / **median** / max)"] == "2,500 / **3,334** / 5,000"
    assert row["once running ÷ Connect's (medians)"] == "0.400"  # 4,000 / 10,000
    assert row["in-process CPU µs / record"] == "30.0"  # 0.3 s / 10,001 records
    assert row["Temporal CPU s / 10k records"] == "1.000"  # 0.9999: 1 s / 10,001 records
    assert row["Temporal history events / record"] == "0.100"
    connect = dict(zip(header, _row(text, "kafka-connect-file"), strict=True))
    assert connect["once running ÷ Connect's (medians)"] == ""  # Courier pipelines only
    assert _row(text, "courier-batch-postgres")[2:4] == ["0", "failed (see Problems)"]


def test_the_summary_gives_the_range_size_gain_and_the_method_the_temporal_database() -> None:
    text = markdown(_report(), None)
    # once running 4,000 ÷ 2,000; end to end 3,334 ÷ 1,667
    assert (
        "- Throughput at `max_records` 5,000 ÷ at 500 (`courier-batch-file-5000` ÷ "
        "`courier-batch-file-500`, medians): **2×** once running, 2× end to end." in text
    )
    method = text.split("## Method")[1].split("##")[0]
    assert "- Temporal's database: fresh; 0.2 MB at the start, **12.5 MB** at the end" in method


def test_the_suite_selects_the_range_sizes_by_default_and_old_names_still_work() -> None:
    default = parse_args([])
    assert default.records == 200_000 and not default.keep_temporal
    assert "courier-batch-file" not in default.pipelines
    assert {
        "kafka-connect-file",
        "naive-aiokafka-file",
        "courier-batch-file-500",
        "courier-batch-file-2000",
        "courier-batch-file-5000",
        "courier-batch-file-10000",
        "courier-batch-postgres",
    } <= set(default.pipelines)
    old = parse_args(["-p", "courier-batch-file-fsync-never,courier-batch-file", "--keep-temporal"])
    assert old.pipelines == ["courier-batch-file", "courier-batch-file-5000"]  # the suite's order
    assert old.keep_temporal
    assert parse_args(["-p", "all"]).pipelines == list(BY_NAME)
