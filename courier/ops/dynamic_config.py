"""The Temporal dynamic config a production cluster needs for Courier's destination queues.

A task queue's rate limit is exact only when the queue has one partition: the server splits
a queue into 4 by default and limits each partition on its own, so the last partition to drain
delivers a quarter of the limit. Each destination's activity queue gets one read and one write
partition (a destination's throughput is bounded by its own limit and workers, far below what
one partition dispatches). The local stack's dev server sets the same keys globally.
"""

from __future__ import annotations

from typing import Any

import yaml

from courier.config import CourierConfig

PARTITION_KEYS = (
    "matching.numTaskqueueReadPartitions",
    "matching.numTaskqueueWritePartitions",
)


def dynamic_config(config: CourierConfig) -> dict[str, list[dict[str, Any]]]:
    """Dynamic-config entries: one partition for every destination's activity queue."""
    return {
        key: [
            {
                "value": 1,
                "constraints": {
                    "namespace": config.temporal.namespace,
                    "taskQueueName": dest.task_queue,
                    "taskType": "Activity",
                },
            }
            for dest in config.destinations
        ]
        for key in PARTITION_KEYS
    }


def render(config: CourierConfig) -> str:
    """The entries as a dynamic-config YAML file, with a comment saying what they are for."""
    header = (
        "# Temporal dynamic config for Courier's destination queues: one partition each, so\n"
        "# their rate limits are exact. Merge into the server's dynamic config file\n"
        "# (dynamicConfigClient.filepath); the server reloads it without a restart.\n"
    )
    return header + yaml.safe_dump(dynamic_config(config), sort_keys=False)
