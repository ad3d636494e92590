"""REST authentication and signing end to end: Courier in-process against the real stack, a
real OAuth2 token endpoint (authlib's server, :mod:`tests.integration.token_server`) and the
recording receiver, whose requests are checked with the `standardwebhooks` package's verifier.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from temporalio.client import Client

from courier.temporal.client import connect
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic, produce
from tests.integration.harness import courier_running, eventually, pipeline_config
from tests.integration.test_batch_mode import FAST_RETRY
from tests.integration.token_server import TokenServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
WAIT_S = 120.0
SIGNING_SECRET = "whsec_" + base64.b64encode(b"courier-signing-key-0123456789ab").decode()


def oauth(token_url: str, client_id: str, secret: str) -> dict[str, Any]:
    return {
        "oauth2_client_credentials": {
            "token_url": token_url,
            "client_id": client_id,
            "client_secret": secret,
            "scopes": ["orders:write"],
        }
    }


async def pending_failure(client: Client, query: str) -> str | None:
    """The last failure of the first pending export of a workflow matching ``query``."""
    async for wf in client.list_workflows(query):
        description = await client.get_workflow_handle(wf.id).describe()
        for pending in description.raw_description.pending_activities:
            if pending.HasField("last_failure") and pending.last_failure.message:
                return str(pending.last_failure.message)
    return None


async def test_bearer_tokens_are_fetched_refreshed_on_401_and_after_expiry_and_signed(
    stack: Any, unique: str
) -> None:
    secret = f"client-secret-{unique}"
    async with TokenServer({"courier": secret}, expires_in=2) as tokens, Receiver() as receiver:
        receiver.script("/orders/", first=[401])  # e.g. a token revoked before it expired
        config = pipeline_config(
            stack,
            unique,
            destinations=[
                {
                    "name": f"api-{unique}",
                    "kind": "rest",
                    "url": f"{receiver.url}/orders/{{key}}",
                    "auth": oauth(tokens.url, "courier", secret),
                    "signing": "standard-webhooks",
                    "signing_secret": SIGNING_SECRET,
                    "retry": FAST_RETRY,
                }
            ],
            routes={"default": f"api-{unique}"},
            ingest={"mode": "per_record"},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack.kafka_bootstrap, topic, partitions=1)
        client = await connect(config.temporal)
        async with courier_running(client, config):
            await produce(stack.kafka_bootstrap, topic, [(b"o-1", json.dumps({"n": 1}).encode())])

            async def delivered(n: int) -> list[Any]:
                done = receiver.effect_requests("/orders/")
                return done if len(done) >= n else []

            await eventually(lambda: delivered(1), timeout=WAIT_S)
            first_token_at = time.monotonic()
            # The token lives 2 s and is replaced 1 s early: let it run out (time must pass).
            await asyncio.sleep(max(0.0, first_token_at + 1.5 - time.monotonic()))
            await produce(stack.kafka_bootstrap, topic, [(b"o-2", json.dumps({"n": 2}).encode())])
            await eventually(lambda: delivered(2), timeout=WAIT_S)

    sent = [r.headers["authorization"] for r in receiver.requests]
    assert [r.status for r in receiver.requests] == [401, 200, 200]
    # The 401 got one new token and one more try; the expired token was replaced.
    assert len(tokens.issued) == 3 and len(set(tokens.issued)) == 3
    assert sent == [f"Bearer {t}" for t in tokens.issued]
    # Every request verifies with the Standard Webhooks package, its id the idempotency key.
    for request in receiver.requests:
        assert Webhook(SIGNING_SECRET).verify(request.body, request.headers)
        assert request.headers["webhook-id"] == str(request.idempotency_key).replace(".", "%2E")
    assert receiver.requests[0].headers["webhook-id"] == receiver.requests[1].headers["webhook-id"]


async def test_records_wait_while_the_token_endpoint_is_down_or_refuses_the_client(
    stack: Any, unique: str
) -> None:
    secret = f"client-secret-{unique}"
    down_port = free_port()
    down_url = f"http://127.0.0.1:{down_port}/oauth/token"
    async with TokenServer({"courier": "the-right-one"}) as refusing, Receiver() as receiver:
        down, wrong = f"down-{unique}", f"wrong-{unique}"
        config = pipeline_config(
            stack,
            unique,
            destinations=[
                {
                    "name": name,
                    "kind": "rest",
                    "url": f"{receiver.url}/{name}/{{key}}",
                    "auth": oauth(url, "courier", secret),
                    "retry": FAST_RETRY,
                }
                for name, url in ((down, down_url), (wrong, refusing.url))
            ],
            routes={
                "rules": [
                    {"prefix": "down-", "destination": down},
                    {"prefix": "wrong-", "destination": wrong},
                ]
            },
            ingest={"mode": "per_record"},
        )
        topic = config.kafka.topics[0]
        await create_topic(stack.kafka_bootstrap, topic, partitions=1)
        client = await connect(config.temporal)
        async with courier_running(client, config):
            await produce(
                stack.kafka_bootstrap,
                topic,
                [(f"{p}{i}".encode(), b"{}") for p in ("down-", "wrong-") for i in range(2)],
            )
            query = f"CourierTopic = '{topic}' AND CourierDestination = '{{}}'"
            down_reason = await eventually(
                lambda: pending_failure(client, query.format(down)), timeout=WAIT_S
            )
            wrong_reason = await eventually(
                lambda: pending_failure(client, query.format(wrong)), timeout=WAIT_S
            )
            assert f"token endpoint {down_url} could not be reached" in down_reason
            assert "records wait" in down_reason
            assert wrong_reason.startswith(
                f"token endpoint {refusing.url} refused client 'courier' (401: invalid_client"
            ), wrong_reason
            assert f"check destination {wrong}'s auth.oauth2_client_credentials" in wrong_reason
            assert secret not in down_reason + wrong_reason
            assert not receiver.requests  # nothing was sent without a token

            # The token endpoint comes up; the client's secret is registered: records flow.
            async with TokenServer({"courier": secret}, port=down_port):
                refusing.clients["courier"] = secret

                async def all_delivered() -> bool:
                    return (
                        receiver.effects(f"/{down}/") == 2 and receiver.effects(f"/{wrong}/") == 2
                    )

                await eventually(all_delivered, timeout=WAIT_S)
    assert all(r.headers["authorization"].startswith("Bearer ") for r in receiver.requests)
