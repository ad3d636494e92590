"""The Temporal dynamic config a production cluster needs for Courier's destination queues.

A task queue's rate limit is exact only when the queue has one partition: the server splits
a queue into 4 by default and limits each partition on its own, so the last partition to drain
delivers a quarter of the limit. Each destination's activity queue gets one read and one write
partition (a destination's throughput is bounded by its own limit and workers, far below what
one partition dispatches). The local stack's dev server sets the same keys globally.

Task-queue fairness is turned on for the workflow task queue, where every destination's
workflows meet: with it, the server dispatches workflow tasks of different fairness keys
(destination names, set by ingest) in turn instead of first-in first-out.
"""

from __future__ import annotations

from typing import Any

import yaml

from courier.config.model import CourierConfig

PARTITION_KEYS = (
    "matching.numTaskqueueReadPartitions",
    "matching.numTaskqueueWritePartitions",
)
FAIRNESS_KEY = "matching.enableFairness"


def dynamic_config(config: CourierConfig) -> dict[str, list[dict[str, Any]]]:
    """Dynamic-config entries: one partition per destination queue; fairness for workflows."""
    entries: dict[str, list[dict[str, Any]]] = {
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
    if config.ingest.fairness:
        entries[FAIRNESS_KEY] = [
            {
                "value": True,
                "constraints": {
                    "namespace": config.temporal.namespace,
                    "taskQueueName": config.temporal.workflow_task_queue,
                    "taskType": "Workflow",
                },
            }
        ]
    return entries


def render(config: CourierConfig) -> str:
    """The entries as a dynamic-config YAML file, with a comment saying what they are for."""
    header = (
        "# Temporal dynamic config for Courier: one partition per destination queue, so their\n"
        "# rate limits are exact, and task-queue fairness on the workflow queue. Merge into the\n"
        "# server's dynamic config file (dynamicConfigClient.filepath); the server reloads it\n"
        "# without a restart.\n"
    )
    return header + yaml.safe_dump(dynamic_config(config), sort_keys=False)
