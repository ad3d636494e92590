"""The custom search attributes Courier sets on every workflow, for the Temporal UI and queries."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

DESTINATION = SearchAttributeKey.for_keyword("CourierDestination")
RECORD_KEY = SearchAttributeKey.for_keyword("CourierKey")
TOPIC = SearchAttributeKey.for_keyword("CourierTopic")
PARTITION = SearchAttributeKey.for_int("CourierPartition")
OFFSET = SearchAttributeKey.for_int("CourierOffset")
FAILED_COUNT = SearchAttributeKey.for_int("CourierFailedCount")
"""Batch mode: records of a range that failed (set when the range's workflow fails)."""

ALL = (DESTINATION, RECORD_KEY, TOPIC, PARTITION, OFFSET, FAILED_COUNT)

DEV_SERVER_FLAGS: dict[str, str] = {
    key.name: key.indexed_value_type.name.title().replace("_", "") for key in ALL
}
"""``name → type`` as ``temporal server start-dev --search-attribute Name=Type`` expects it."""
