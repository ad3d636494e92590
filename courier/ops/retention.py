"""Topic retention as ``courier status`` needs it: records by reference live only that long.

A record handed off by reference is read back from Kafka when it is exported; if it waits in a
destination's backlog longer than the topic's retention, it is gone. Status warns at half.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from courier.config.model import KafkaConfig
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
