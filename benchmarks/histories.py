"""Temporal cost of a run: history events and estimated billable actions per record.

The run's workflows are those on its own workflow task queue (each run has a fresh one). Their
histories are fetched — all of them, or an evenly spread sample scaled up to the total — and
counted:

- **events**: every history event;
- **billable actions** (estimate, as Temporal Cloud counts them): workflow starts
  (``WorkflowExecutionStarted``, one per run, continue-as-new included) plus activity attempts
  (each ``ActivityTaskStarted`` event carries its attempt number; a retried activity records
  only its last attempt). One completed one-activity workflow is 2.
- other event types Temporal Cloud also bills (timers, signals, markers of local activities and
  side effects, search-attribute upserts, accepted updates) are counted apart, not added.
"""

from __future__ import annotations

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from benchmarks.common import HistoryStats

OTHER_ACTION_EVENTS = frozenset(
    {
        EventType.EVENT_TYPE_TIMER_STARTED,
        EventType.EVENT_TYPE_MARKER_RECORDED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
        EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
        EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    }
)


async def history_stats(client: Client, query: str, records: int, sample: int) -> HistoryStats:
    """Count the histories of the workflows matching ``query`` (at most ``sample`` fetched)."""
    executions = [(wf.id, wf.run_id) async for wf in client.list_workflows(query, page_size=1000)]
    if not executions:
        raise LookupError(f"no workflows match {query}")
    step = max(1, len(executions) // sample)
    chosen = executions[::step][:sample]
    events = starts = attempts = other = 0
    for workflow_id, run_id in chosen:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        for event in history.events:
            events += 1
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                starts += 1
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                attempts += max(1, event.activity_task_started_event_attributes.attempt)
            elif event.event_type in OTHER_ACTION_EVENTS:
                other += 1
    scale = len(executions) / len(chosen)
    return HistoryStats(
        workflows=len(executions),
        sampled=len(chosen),
        events=events * scale,
        actions=(starts + attempts) * scale,
        other_action_events=other * scale,
        records=records,
    )
