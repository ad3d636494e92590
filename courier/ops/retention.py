"""Topic retention as ``courier status`` needs it: records by reference live only that long.

A record handed off by reference is read back from Kafka when it is exported; if it waits in a
destination's backlog longer than the topic's retention, it is gone. Status warns at half.
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from courier.config import KafkaConfig


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
