"""Retention as ``courier status`` needs it: Kafka's for records by reference, Temporal's for
failures.

A record handed off by reference is read back from Kafka when it is exported; if it waits in a
destination's backlog longer than the topic's retention, it is gone. Status warns at half. A
failed record's workflow lives as long as the namespace keeps closed workflows; after that only
its dead-letter entry says it failed. Status shows that retention and warns about failures
with no dead-letter topic, or older than half of it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError

from courier.config.model import CourierConfig, KafkaConfig
from ingest.kafka import KafkaUnreachable, check_brokers


async def topic_retention_s(kafka: KafkaConfig) -> dict[str, float | None]:
    """``retention.ms`` of each configured topic in seconds (None: unlimited or unknown)."""
    if not kafka.topics:
        return {}
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": None})
                for topic in kafka.topics
            ]
        )
    finally:
        await admin.close()
    found: dict[str, float | None] = dict.fromkeys(kafka.topics)
    for response in responses:
        for _code, _message, _type, name, entries in response.resources:
            for entry in entries:
                if entry[0] == "retention.ms" and entry[1] is not None and int(entry[1]) >= 0:
                    found[name] = int(entry[1]) / 1000
    return found


async def retention_warnings(
    kafka: KafkaConfig, backlogs: Sequence[tuple[str, float]]
) -> list[str]:
    """Warnings where a backlog (destination, age in s) is older than half the shortest retention.

    A retention that cannot be read is one warning saying why.
    """
    try:
        await check_brokers(kafka)
        retention = [s for s in (await topic_retention_s(kafka)).values() if s is not None]
    except (KafkaUnreachable, KafkaError, OSError) as err:
        return [f"cannot read topic retention: {err}"]
    if not retention:
        return []
    shortest = min(retention)
    return [
        f"{name}'s oldest pending export waits {age:.0f}s, over half the topics' retention "
        f"({shortest:.0f}s): records by reference that outlive the retention can no longer be "
        "exported; add workers or raise the destination's rate limit"
        for name, age in backlogs
        if age > shortest / 2
    ]


async def namespace_retention_s(client: Client) -> float | None:
    """How long the namespace keeps closed workflows (None: it could not be read)."""
    try:
        response = await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=client.namespace)
        )
    except RPCError:
        return None
    ttl = response.config.workflow_execution_retention_ttl
    return ttl.ToTimedelta().total_seconds() if ttl.ByteSize() else None


def failure_warnings(
    config: CourierConfig,
    retention_s: float | None,
    failures: Sequence[tuple[str, int, float | None]],
) -> list[str]:
    """Warnings about failed records Temporal will forget: (destination, failed, oldest close).

    A destination with failures and no dead-letter topic loses their trace when the namespace's
    retention ends; failures older than half the retention are about to go.
    """
    found = []
    now = time.time()
    for name, failed, oldest in failures:
        if not failed:
            continue
        if config.dead_letter.topic_for(name) is None:
            found.append(
                f"{name}: {failed} failed record(s) and no dead-letter topic: Temporal forgets "
                f"them after the namespace's retention ({format_retention(retention_s)}); set "
                "dead_letter.topic to keep them, then courier replay or skip them"
            )
        if retention_s and oldest is not None and now - oldest > retention_s / 2:
            since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(oldest))
            found.append(
                f"{name}: failed records since {since}, "
                f"over half the namespace's retention ({format_retention(retention_s)}) ago: "
                "courier replay or skip them before Temporal forgets them"
            )
    return found


def format_retention(seconds: float | None) -> str:
    """A retention in words: ``24h``, ``7d``, or ``unknown``."""
    if seconds is None:
        return "unknown"
    if seconds % 86400 == 0 and seconds >= 86400:
        return f"{seconds / 86400:.0f}d"
    return f"{seconds / 3600:.0f}h" if seconds >= 3600 else f"{seconds:.0f}s"
