"""Unit tests of REST authentication and signing against httpx.MockTransport fakes: the OAuth2
client-credentials token (fetched, cached, refreshed on 401, shared, its errors retryable and
secret-free) and Standard Webhooks signatures (checked with the `standardwebhooks` package)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from activities import rest_auth
from activities.errors import PermanentExportError, RetryableExportError
from activities.rest import RestConfig, RestDestination
from activities.rest_auth import webhook_id
from tests.activities.test_rest import outgoing

TOKEN_URL = "http://auth.test/oauth/token"
SECRET = "s3cr3t-client/secret+x"
SIGNING_KEY = bytes(range(32))
SIGNING_SECRET = "whsec_" + base64.b64encode(SIGNING_KEY).decode()

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def oauth(**overrides: Any) -> dict[str, Any]:
    return {
        "oauth2_client_credentials": {
            "token_url": TOKEN_URL,
            "client_id": "courier app",
            "client_secret": SECRET,
            "scopes": ["orders:write", "orders:read"],
        }
        | overrides
    }


def config(**overrides: Any) -> RestConfig:
    fields: dict[str, Any] = {"name": "api", "kind": "rest", "url": "http://api.test/orders"}
    return RestConfig.model_validate(fields | overrides)


class TokenServer:
    """A fake token endpoint: numbered tokens, scripted answers, the requests it got."""

    def __init__(self, *, expires_in: int | None = 3600) -> None:
        self.expires_in = expires_in
        self.requests: list[httpx.Request] = []
        self.answers: list[httpx.Response] = []  # given first, in order, before tokens
        self.issued: list[str] = []
        self.gate: asyncio.Event | None = None  # when set, answers wait for it

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        if self.answers:
            return self.answers.pop(0)
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        body: dict[str, Any] = {"access_token": token, "token_type": "bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)


class Api:
    """A fake destination accepting only the tokens it is told are valid."""

    def __init__(self, tokens: TokenServer) -> None:
        self.tokens = tokens
        self.revoked: set[str] = set()
        self.requests: list[httpx.Request] = []
        self.auth: list[str | None] = []
        """Each request's Authorization as sent (a request resent after a 401 is changed)."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.auth.append(request.headers.get("Authorization"))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.tokens.issued or token in self.revoked:
            return httpx.Response(401, text=f"token {token} refused")
        return httpx.Response(201)


async def opened(tokens: TokenServer, api: Handler, **overrides: Any) -> RestDestination:
    async def route(request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            return await tokens(request)
        return await api(request)

    destination = RestDestination(
        config(**({"auth": oauth()} | overrides)), transport=httpx.MockTransport(route)
    )
    await destination.open()
    return destination


async def test_the_token_is_fetched_with_the_client_credentials_grant_and_basic_auth() -> None:
    tokens = TokenServer()
    api = Api(tokens)
    destination = await opened(tokens, api)
    assert await destination.write([outgoing(offset=o) for o in (1, 2, 3)]) == "3 × HTTP 201"
    await destination.close()

    [fetch] = tokens.requests
    assert fetch.method == "POST"
    assert fetch.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = parse_qs(fetch.content.decode())
    assert form == {"grant_type": ["client_credentials"], "scope": ["orders:write orders:read"]}
    scheme, encoded = fetch.headers["Authorization"].split(" ")
    assert scheme == "Basic"
    # RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined.
    assert base64.b64decode(encoded).decode() == "courier%20app:s3cr3t-client%2Fsecret%2Bx"
    assert api.auth == ["Bearer tok-1"] * 3


async def test_body_client_auth_sends_the_credentials_in_the_form() -> None:
    tokens = TokenServer()
    destination = await opened(tokens, Api(tokens), auth=oauth(client_auth="body", scopes=[]))
    await destination.write([outgoing()])

    [fetch] = tokens.requests
    assert "Authorization" not in fetch.headers
    assert parse_qs(fetch.content.decode()) == {
        "grant_type": ["client_credentials"],
        "client_id": ["courier app"],
        "client_secret": [SECRET],
    }


async def test_a_token_is_fetched_again_shortly_before_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(rest_auth, "monotonic", lambda: now[0])
    tokens = TokenServer(expires_in=120)
    api = Api(tokens)
    destination = await opened(tokens, api)
    await destination.write([outgoing()])
    now[0] += 120 - rest_auth.TOKEN_MARGIN_S - 1  # still valid, margin kept
    await destination.write([outgoing()])
    assert len(tokens.requests) == 1
    now[0] += 2  # within the margin: replaced
    await destination.write([outgoing()])

    assert len(tokens.requests) == 2
    assert api.auth == [
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-2",
    ]


async def test_a_401_gets_one_new_token_and_one_more_try() -> None:
    tokens = TokenServer()
    api = Api(tokens)
    destination = await opened(tokens, api)
    await destination.write([outgoing()])
    api.revoked.add("tok-1")  # revoked before it expired

    assert await destination.write([outgoing(offset=8)]) == "HTTP 201"
    assert len(tokens.requests) == 2
    assert api.auth == [
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-2",
    ]


async def test_a_401_with_a_new_token_fails_as_configured_without_showing_the_token() -> None:
    tokens = TokenServer()

    async def refuses(request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        return httpx.Response(401, text=f"token {token} lacks scope")

    destination = await opened(tokens, refuses)
    with pytest.raises(PermanentExportError) as failed:
        await destination.write([outgoing()])

    assert len(tokens.requests) == 2  # one refresh, not a loop
    assert "401" in failed.value.reason
    assert "token *** lacks scope" in failed.value.reason
    assert "tok-" not in failed.value.reason


async def test_concurrent_requests_share_one_fetch_and_one_refresh() -> None:
    tokens = TokenServer()
    tokens.gate = asyncio.Event()
    api = Api(tokens)
    destination = await opened(tokens, api, max_concurrency=16)
    batch = [outgoing(offset=o) for o in range(16)]
    writing = asyncio.create_task(destination.write(batch))
    while not tokens.requests:
        await asyncio.sleep(0)
    for _ in range(50):  # the others reach the lock meanwhile
        await asyncio.sleep(0)
    tokens.gate.set()
    assert await writing == "16 × HTTP 201"
    assert len(tokens.requests) == 1

    api.revoked.add("tok-1")
    assert await destination.write(batch) == "16 × HTTP 201"
    assert len(tokens.requests) == 2  # the 401s of all 8 concurrent requests: one refresh
    assert set(api.auth[-8:]) == {"Bearer tok-2"}


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(503, text="maintenance"),
        httpx.Response(500, json={"error": "server_error"}),
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
    ],
    ids=["503", "500", "refused", "timeout"],
)
async def test_token_endpoint_unavailable_is_transient(
    answer: httpx.Response | Exception,
) -> None:
    tokens = TokenServer()

    async def token_endpoint(request: httpx.Request) -> httpx.Response:
        tokens.requests.append(request)
        if isinstance(answer, Exception):
            raise answer
        return answer

    api = Api(tokens)

    async def route(request: httpx.Request) -> httpx.Response:
        return await (token_endpoint if str(request.url) == TOKEN_URL else api)(request)

    destination = RestDestination(config(auth=oauth()), transport=httpx.MockTransport(route))
    await destination.open()
    with pytest.raises(RetryableExportError) as failed:
        await destination.write([outgoing(offset=o) for o in range(4)])

    assert failed.value.cause == "unavailable"
    assert "token endpoint http://auth.test/oauth/token" in failed.value.reason
    assert "records wait" in failed.value.reason
    assert not api.requests  # nothing goes out without a token
    assert len(tokens.requests) == 1  # the waiting requests share the failure
    assert SECRET not in failed.value.reason


async def test_a_refused_client_is_a_visible_retryable_config_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(rest_auth, "monotonic", lambda: now[0])
    tokens = TokenServer()
    tokens.answers.append(
        httpx.Response(
            401,
            json={"error": "invalid_client", "error_description": f"bad secret {SECRET}"},
        )
    )
    api = Api(tokens)
    destination = await opened(tokens, api)
    with pytest.raises(RetryableExportError) as failed:
        await destination.write([outgoing()])

    reason = failed.value.reason
    assert reason.startswith(
        "token endpoint http://auth.test/oauth/token refused client 'courier app' "
        "(401: invalid_client (bad secret ***)); check destination api's "
        "auth.oauth2_client_credentials"
    )
    assert "\n" not in reason
    assert SECRET not in reason
    assert not api.requests
    # Once the secret is put right (here: the server accepts it again), records flow.
    now[0] += rest_auth.FAILURE_HOLD_S
    assert await destination.write([outgoing()]) == "HTTP 201"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"token_type": "bearer"}, "without an access_token"),
        ({"access_token": "t", "token_type": "mac"}, "of type 'mac', not Bearer"),
    ],
)
async def test_a_token_answer_without_a_bearer_token_is_retryable(
    body: dict[str, Any], problem: str
) -> None:
    tokens = TokenServer()
    tokens.answers.append(httpx.Response(200, json=body))
    destination = await opened(tokens, Api(tokens))
    with pytest.raises(RetryableExportError, match=problem):
        await destination.write([outgoing()])


def test_the_secrets_stay_out_of_the_policy_the_dump_and_the_repr() -> None:
    c = config(auth=oauth(), signing="standard-webhooks", signing_secret=SIGNING_SECRET)
    shown = [repr(c), str(c.model_dump()), c.model_dump_json(), repr(c.policy())]
    for text in shown:
        assert SECRET not in text
        assert SIGNING_SECRET not in text


async def test_the_preview_names_the_token_without_fetching_one() -> None:
    tokens = TokenServer()
    destination = await opened(
        tokens, Api(tokens), signing="standard-webhooks", signing_secret=SIGNING_SECRET
    )
    shown = destination.preview(outgoing())

    headers = shown["headers"]
    assert isinstance(headers, dict)
    assert headers["Authorization"] == "Bearer <token from http://auth.test/oauth/token>"
    assert headers["webhook-id"] == webhook_id("courier/g/orders/3/7")
    assert not tokens.requests
    assert SECRET not in json.dumps(shown)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"auth": oauth(), "headers": {"authorization": "Bearer x"}}, "remove one of them"),
        ({"auth": oauth(token_url="ftp://auth.test/token")}, "http:// or https://"),
        ({"auth": oauth(client_auth="jwt")}, "basic"),
        ({"auth": oauth(scopes=["a b"])}, "is not a scope"),
        ({"signing": "standard-webhooks"}, "needs signing_secret"),
        ({"signing_secret": SIGNING_SECRET}, "without signing"),
        (
            {"signing": "standard-webhooks", "signing_secret": "whsec_not base64!"},
            "expected whsec_ followed by base64",
        ),
        (
            {
                "signing": "standard-webhooks",
                "signing_secret": "whsec_" + base64.b64encode(b"short").decode(),
            },
            "decodes to 5 bytes",
        ),
        (
            {
                "signing": "standard-webhooks",
                "signing_secret": SIGNING_SECRET,
                "headers": {"Webhook-Id": "x"},
            },
            "signing sets webhook-id",
        ),
    ],
)
def test_config_problems_are_named(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as invalid:
        config(**fields)
    [error] = invalid.value.errors()
    assert problem in error["msg"]
    assert SIGNING_SECRET not in error["msg"] and "whsec_not" not in error["msg"]


async def test_signed_requests_verify_with_the_standard_webhooks_package() -> None:
    seen: list[httpx.Request] = []

    async def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    destination = RestDestination(
        config(
            url="http://api.test/orders.v1/{key}",
            signing="standard-webhooks",
            signing_secret=SIGNING_SECRET,
        ),
        transport=httpx.MockTransport(api),
    )
    await destination.open()
    item = outgoing()
    item = type(item)(idempotency_key="courier/g.1/orders.v1@id/3/7", record=item.record)
    await destination.write([item])
    await destination.write([item])  # a retry: same id, signed again

    for request in seen:
        headers = dict(request.headers)
        assert headers["webhook-id"] == "courier/g%2E1/orders%2Ev1@id/3/7"
        assert "." not in headers["webhook-id"]
        assert Webhook(SIGNING_SECRET).verify(request.content, headers) == json.loads(
            request.content
        )
        with pytest.raises(WebhookVerificationError):
            Webhook(SIGNING_SECRET).verify(request.content + b" ", headers)
    assert seen[0].headers["webhook-id"] == seen[1].headers["webhook-id"]


def test_the_signature_is_the_specs_hmac() -> None:
    signer = rest_auth.WebhookSigner(SecretStr(SIGNING_SECRET))
    msg_id, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", '{"test": 2432232314}'
    headers = signer.headers(msg_id, body.encode(), now=1614265330)
    # What the reference library computes for the same id, timestamp, body and key.
    expected = Webhook(SIGNING_KEY).sign(msg_id, datetime.fromtimestamp(1614265330, tz=UTC), body)
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": expected,
    }


def test_secrets_written_into_the_file_are_found() -> None:
    from courier.config.lint import written_secrets

    entry = {
        "name": "api",
        "kind": "rest",
        "url": "http://api.test/orders",
        "auth": oauth(),
        "signing": "standard-webhooks",
        "signing_secret": SIGNING_SECRET,
    }
    tree = {"destinations": [entry], "routes": {"default": "api"}}
    assert {s.field for s in written_secrets(tree)} == {
        "destinations[0].auth.oauth2_client_credentials.client_secret",
        "destinations[0].signing_secret",
    }
    from_env = entry | {"signing_secret": "${WEBHOOK_SECRET}", "auth": oauth(client_secret="${S}")}
    assert written_secrets({"destinations": [from_env], "routes": {"default": "api"}}) == []
