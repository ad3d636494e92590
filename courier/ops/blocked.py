"""Keys blocked by a record that failed for good (destinations with ``ordering: key``).

A blocked key's ``ExportKey`` workflow keeps running with ``CourierFailedCount = 1`` and the
blocked record's ``CourierTopic``/``CourierPartition``/``CourierOffset``; it answers the query
``state`` and takes the updates ``retry`` (``courier replay``) and ``skip`` (``courier skip``).
This module finds them and asks them; it needs a workflow worker to answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from courier.core import search_attributes as sa
from courier.core.ids import parse_workflow_id
from workflows.export_key import RETRY_UPDATE, SKIP_UPDATE, STATE_QUERY
from workflows.types import KeyState

ANSWER_TIMEOUT_S = 10.0
"""Longest a key's workflow may take to answer a query or an update."""


class BlockedKeyError(Exception):
    """A key's workflow cannot be found, is not blocked, or does not answer; says which."""


@dataclass(frozen=True)
class BlockedKey:
    """A blocked key's workflow and what it reports."""

    workflow_id: str
    state: KeyState


def blocked_keys_query(destination: str | None = None, extra: str | None = None) -> str:
    """Visibility query for the workflows of blocked keys (of one destination)."""
    parts = [
        "WorkflowType = 'ExportKey'",
        "ExecutionStatus = 'Running'",
        f"{sa.FAILED_COUNT.name} > 0",
    ]
    if destination:
        parts.append(f"{sa.DESTINATION.name} = '{destination}'")
    if extra:
        parts.append(f"({extra})")
    return " AND ".join(parts)


async def key_state(client: Client, workflow_id: str) -> KeyState:
    """Ask a key's workflow for its state; BlockedKeyError if it cannot answer."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            state: KeyState = await handle.query(
                STATE_QUERY,
                result_type=KeyState,
                rpc_timeout=timedelta(seconds=ANSWER_TIMEOUT_S),
            )
    except TimeoutError:
        raise BlockedKeyError(
            f"{workflow_id} did not answer within {ANSWER_TIMEOUT_S:.0f}s; is a workflow "
            "worker (courier worker --workflows) running?"
        ) from None
    except (RPCError, WorkflowQueryFailedError) as err:
        raise BlockedKeyError(f"{workflow_id} cannot be asked for its state: {err}") from err
    return state


async def blocked_keys(
    client: Client, destination: str | None = None, *, unanswered: list[str] | None = None
) -> list[BlockedKey]:
    """The blocked keys (of one destination), each with its state, oldest block first.

    Keys listed as blocked whose workflow did not answer are left out, their IDs appended to
    ``unanswered`` if given.
    """
    found = []
    async for execution in client.list_workflows(blocked_keys_query(destination)):
        try:
            state = await key_state(client, execution.id)
        except BlockedKeyError:
            if unanswered is not None:
                unanswered.append(execution.id)
            continue
        if state.blocked is not None:
            found.append(BlockedKey(execution.id, state))
    return sorted(found, key=lambda b: b.state.blocked.since if b.state.blocked else 0.0)


async def find_blocked(client: Client, identifier: str) -> BlockedKey:
    """The blocked key named by a key workflow's ID or by the ID of the record it waits on."""
    if "/ordered/" in identifier:
        state = await key_state(client, identifier)
        if state.blocked is None:
            raise BlockedKeyError(f"key {state.key!r} of {state.destination} is not blocked")
        return BlockedKey(identifier, state)
    try:
        parsed = parse_workflow_id(identifier)
    except ValueError:
        parsed = None
    if parsed is None or parsed.is_range:
        raise BlockedKeyError(
            f"{identifier!r} is neither a record ID (courier/<group>/<topic>@<topic ID>/"
            "<partition>/<offset>) nor a key workflow ID (courier/<group>/ordered/…); "
            "courier status lists blocked keys with both"
        ) from None
    topic, partition, offset = parsed.topic, parsed.partition, parsed.offset
    query = blocked_keys_query(
        extra=f"{sa.TOPIC.name} = '{topic}' AND {sa.PARTITION.name} = {partition} "
        f"AND {sa.OFFSET.name} = {offset}"
    )
    async for execution in client.list_workflows(query):
        state = await key_state(client, execution.id)
        if state.blocked is not None and state.blocked.idempotency_key == identifier:
            return BlockedKey(execution.id, state)
    if await _is_failed_export(client, identifier):
        raise BlockedKeyError(
            f"{identifier} is a failed export, not a record a key waits on: nothing is held back "
            "by it; fix the cause and run courier replay to export it again"
        )
    raise BlockedKeyError(
        f"no key is blocked at {identifier} (it may have been skipped or replayed already; "
        "courier status lists blocked keys)"
    )


async def _is_failed_export(client: Client, workflow_id: str) -> bool:
    """Whether ``workflow_id`` names a record's own workflow whose latest run failed."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return False
    return (
        description.workflow_type == "ExportRecord"
        and description.status == WorkflowExecutionStatus.FAILED
    )


async def decide(client: Client, workflow_id: str, update: str, *args: str) -> str:
    """Send ``retry`` or ``skip`` to a blocked key; returns the record ID it applies to."""
    if update not in (RETRY_UPDATE, SKIP_UPDATE):
        raise ValueError(f"unknown decision {update!r}")
    handle = client.get_workflow_handle(workflow_id)
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            result: str = await handle.execute_update(
                update,
                args=list(args),
                result_type=str,
                rpc_timeout=timedelta(seconds=ANSWER_TIMEOUT_S),
            )
    except TimeoutError:
        raise BlockedKeyError(
            f"{workflow_id} did not answer within {ANSWER_TIMEOUT_S:.0f}s; is a workflow "
            "worker (courier worker --workflows) running?"
        ) from None
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        reason = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        raise BlockedKeyError(reason) from err
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise BlockedKeyError(f"{workflow_id} is not running") from err
        raise BlockedKeyError(f"{workflow_id}: {err}") from err
    return result
