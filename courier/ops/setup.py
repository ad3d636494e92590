"""``courier setup``: register Courier's search attributes in the Temporal namespace.

Idempotent: attributes that exist already with the right type are left alone; one that exists
with another type is an error naming it.
"""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client

from courier.config.model import CourierConfig
from courier.core import search_attributes as sa
from courier.core.output import Output


class SetupError(Exception):
    """The namespace cannot take Courier's search attributes as they are."""


async def ensure_search_attributes(client: Client) -> list[str]:
    """Add the search attributes the namespace lacks; return the names added."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    wanted = {key.name: IndexedValueType.ValueType(key.indexed_value_type) for key in sa.ALL}
    conflicts = [
        f"{name} is {IndexedValueType.Name(existing.custom_attributes[name])}, "
        f"Courier needs {IndexedValueType.Name(kind)}"
        for name, kind in wanted.items()
        if name in existing.custom_attributes and existing.custom_attributes[name] != kind
    ]
    if conflicts:
        raise SetupError("search attribute type conflict: " + "; ".join(conflicts))
    missing = {
        name: kind for name, kind in wanted.items() if name not in existing.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
        )
    return sorted(missing)


async def command(client: Client, config: CourierConfig, out: Output) -> int:
    """``courier setup``: add what is missing and say what was added, and where."""
    try:
        added = await ensure_search_attributes(client)
    except SetupError as err:
        return out.fail(str(err))
    where = f"namespace {config.temporal.namespace} on {config.temporal.address}"
    if added:
        out.out.print(f"added search attributes {', '.join(added)} to {where}")
    else:
        out.out.print(f"search attributes already present in {where}")
    return 0
