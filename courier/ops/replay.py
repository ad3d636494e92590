"""Replaying failed exports: reset each Failed export run to its first workflow task.

The reset run keeps the workflow ID (so every record keeps its idempotency key) and exports
again; the failed run stays listed in the Temporal UI. In batch mode a record that failed for
good has its own ``ExportRecord`` (see ``workflows.export_range``), whose reset exports that
record alone. A Failed ``ExportRange`` of an earlier release is reset whole: its records that
were exported already are written again with the same idempotency keys, so the file and
PostgreSQL sinks skip them and REST endpoints see a repeated ``Idempotency-Key``; only the
records that failed have a new effect.

A key blocked by a record that failed for good (``ordering: key``) is not a Failed run: its
``ExportKey`` workflow gets the update ``retry`` and exports the record again, under the same
idempotency key, before the key's next records.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import timedelta

from rich.progress import Progress
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.client import WorkflowExecution as Execution

from courier.config.model import CourierConfig
from courier.core.output import Output
from courier.ops import failures
from courier.ops.blocked import blocked_keys_query, decide
from workflows.export_key import RETRY_UPDATE


async def replay(client: Client, execution: Execution, *, reason: str) -> str:
    """Reset one failed run so the record is exported again; returns the new run ID.

    A blocked key's workflow is asked to export its blocked record again instead; returns the
    record's ID.
    """
    if execution.workflow_type == "ExportKey":
        return await decide(client, execution.id, RETRY_UPDATE)
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    first_task_done = None
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            first_task_done = event.event_id
            break
    if first_task_done is None:
        raise ValueError(f"{execution.id} has no completed workflow task to reset to")
    response = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=execution.id, run_id=execution.run_id),
            reason=reason,
            workflow_task_finish_event_id=first_task_done,
            request_id=str(uuid.uuid4()),
        )
    )
    return response.run_id


RESETS_IN_FLIGHT = 8


async def replay_all(
    client: Client,
    executions: list[Execution],
    *,
    reason: str,
    on_done: Callable[[Execution, Exception | None], None],
) -> int:
    """Reset every run, a few at a time; ``on_done`` after each. Returns how many failed."""
    slots = asyncio.Semaphore(RESETS_IN_FLIGHT)
    failures = 0

    async def one(execution: Execution) -> None:
        nonlocal failures
        async with slots:
            try:
                await replay(client, execution, reason=reason)
            except Exception as err:  # one bad reset must not stop the others
                failures += 1
                on_done(execution, err)
            else:
                on_done(execution, None)

    await asyncio.gather(*(one(e) for e in executions))
    return failures


def replay_json(
    groups: list[failures.FailureGroup],
    *,
    failed_exports: int,
    blocked_keys: int,
    declined: bool,
    replayed: int,
    errors: list[str],
) -> dict[str, object]:
    """What ``courier replay --json`` prints (docs/cli-json.md)."""
    return {
        "source": "workflows",
        "dry_run": False,
        "failed_exports": failed_exports,
        "blocked_keys": blocked_keys,
        "selected": failed_exports + blocked_keys,
        "declined": declined,
        "replayed": replayed,
        "errors": errors,
        "groups": [g.as_dict() for g in groups],
    }


async def command(
    client: Client,
    config: CourierConfig,
    *,
    destination: str | None,
    since: timedelta | None,
    query: str | None,
    reason: str,
    confirm: Callable[[str], bool] | None,
    out: Output,
    as_json: bool = False,
) -> int:
    """``courier replay``: show the failed exports and blocked keys, ask, replay them.

    ``confirm`` asks the operator the question it is given (None: replay without asking);
    declined, nothing is replayed and the exit code is 1, as it is when any replay failed.
    ``as_json``: no table and no progress bar; one JSON object at the end.
    """
    exports = await failures.find_failures(
        client, config, destination=destination, since=since, extra=query
    )
    blocked = [e async for e in client.list_workflows(blocked_keys_query(destination, query))]
    groups = failures.group(exports)
    errors: list[str] = []

    def report(*, declined: bool = False, replayed: int = 0) -> None:
        if as_json:
            out.write_json(
                replay_json(
                    groups,
                    failed_exports=len(exports),
                    blocked_keys=len(blocked),
                    declined=declined,
                    replayed=replayed,
                    errors=errors,
                )
            )

    if not exports and not blocked:
        if not as_json:
            out.out.print("no failed exports match")
        report()
        return 0
    if exports and not as_json:
        failures.render(groups, out.out)
    if blocked and not as_json:
        out.out.print(f"{len(blocked)} blocked key(s) of ordered destinations (courier status)")
    count = len(exports) + len(blocked)
    what = f"{len(exports)} failed export workflow(s)" if exports else ""
    what += (" and " if exports and blocked else "") + (
        f"{len(blocked)} blocked key(s)" if blocked else ""
    )
    if confirm is not None and not confirm(f"Replay these {what}?"):
        report(declined=True)
        return 1
    with contextlib.ExitStack() as stack:
        progress = None if as_json else stack.enter_context(Progress(console=out.out))
        task = progress.add_task("replaying", total=count) if progress else None

        def done(execution: Execution, err: Exception | None) -> None:
            if err is not None:
                errors.append(f"{execution.id}: {err}")
                out.error(errors[-1])
            if progress is not None and task is not None:
                progress.advance(task)

        failed = await replay_all(
            client, [e.execution for e in exports] + blocked, reason=reason, on_done=done
        )
    if as_json:
        report(replayed=count - failed)
    else:
        out.out.print(f"replayed {count - failed} of {count}")
    return 1 if failed else 0
