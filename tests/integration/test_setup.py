"""``courier setup`` registers Courier's search attributes in a namespace, idempotently."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client

from courier.core import search_attributes as sa
from courier.ops.setup import ensure_search_attributes

pytestmark = pytest.mark.integration


async def test_setup_adds_missing_attributes_once(
    stack_settings: Any, temporal_client: Client, unique: str
) -> None:
    namespace = f"setup-{unique}"
    await temporal_client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)
        )
    )
    client = await Client.connect(stack_settings.temporal_address, namespace=namespace)

    added = await ensure_search_attributes(client)
    again = await ensure_search_attributes(client)

    assert added == sorted(key.name for key in sa.ALL)
    assert again == []
