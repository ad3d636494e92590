"""Fixtures for tests against the real local stack (Kafka, Temporal, PostgreSQL).

``stack`` makes sure the stack runs: it calls :func:`courier_devtools.stack.start_async`;
whatever this
pytest session had to start it stops again at the end, and a stack that was already running is
left alone. Other fixtures build on it. Tests that need the stack are marked
``@pytest.mark.integration`` (deselect them with ``-m "not integration"``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from temporalio.client import Client

from courier_devtools import stack as stack_control
from courier_devtools.stack import StackSettings


@pytest.fixture(scope="session")
def stack_settings() -> StackSettings:
    """Ports and addresses of the local stack, from the ``COURIER_*_PORT`` environment."""
    return stack_control.settings_from_env()


@pytest.fixture(scope="session")
async def stack(stack_settings: StackSettings) -> AsyncIterator[StackSettings]:
    """The running local stack; started if needed, and then stopped at the end of the session."""
    result = await stack_control.start_async(settings=stack_settings)
    yield stack_settings
    if result.started:
        await asyncio.to_thread(
            stack_control.stop, result.started, settings=stack_settings, echo=None
        )


@pytest.fixture(scope="session")
async def temporal_client(stack: StackSettings) -> Client:
    """A Temporal client connected to the local dev server (``default`` namespace)."""
    return await Client.connect(stack.temporal_address, namespace=stack.temporal_namespace)


@pytest.fixture(scope="session")
async def pg_pool(stack: StackSettings) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool on the ``courier`` database as the ``courier`` user."""
    pool = await asyncpg.create_pool(stack.postgres_dsn, min_size=1, max_size=5)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: StackSettings) -> str:
    """Bootstrap servers of the local Kafka broker, e.g. ``127.0.0.1:9092``."""
    return stack.kafka_bootstrap


@pytest.fixture
def unique() -> str:
    """A short random suffix for this test's topic, task queue, consumer group and table names."""
    return uuid.uuid4().hex[:10]
