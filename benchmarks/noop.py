"""The bare Temporal baseline: a workflow that runs one no-op activity on another task queue.

Kept in its own module, free of side effects, because the workflow sandbox re-imports it.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="bench_noop")
async def noop(value: str) -> str:
    """Does nothing; returns its input."""
    return value


@workflow.defn(name="BenchNoop")
class BenchNoop:
    """One activity on ``activity_queue``, nothing else (the shape of ``ExportRecord``)."""

    @workflow.run
    async def run(self, activity_queue: str) -> str:
        return await workflow.execute_activity(
            noop, "x", task_queue=activity_queue, start_to_close_timeout=timedelta(seconds=30)
        )
