"""REST authentication and signing: OAuth2 client-credentials tokens and Standard Webhooks.

``auth: {oauth2_client_credentials: …}``: a :class:`TokenSource` per destination in a worker
process fetches an access token with the client-credentials grant (RFC 6749 §4.4: a form POST
of ``grant_type=client_credentials`` and ``scope``, the client authenticated with HTTP Basic, or
with ``client_id`` and ``client_secret`` in the body, §2.3.1), keeps it until shortly before it
expires and fetches a new one when the destination answers 401. One fetch at a time: requests
that need a token while one is being fetched wait for it rather than fetch their own.

A token endpoint that cannot be reached, times out or answers 5xx is a transient error. One that
refuses the client (400/401: ``invalid_client``, a wrong secret, an unknown scope) is a config
problem a person must fix, and still retryable: failing every record sent while the secret is
wrong would fail them all for one mistake, while waiting lets them flow once the secret is put
right (workers restarted with it); the reason says what to check.

``signing: standard-webhooks``: each request carries ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``) as the Standard
Webhooks specification says. The ID is the record's idempotency key, the same on every retry,
with ``%`` and ``.`` percent-encoded: the specification wants no ``.`` in it (it delimits the
signed content), and a topic or group name may have one.

No secret (client secret, token, signing secret) is ever put in a reason or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from time import monotonic
from typing import Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from activities.errors import RetryableExportError

TOKEN_MARGIN_S = 30.0
"""A token is replaced this long before it expires (at most half its lifetime), so that no
request goes out with a token that expires on its way."""
FAILURE_HOLD_S = 1.0
"""A failed token fetch is the answer, without another fetch, to the requests that were waiting
for it and to those that need a token within this many seconds after it: a token endpoint that
is down gets at most one try a second from a worker, not one per record."""
WEBHOOK_SECRET_PREFIX = "whsec_"
MIN_WEBHOOK_SECRET_BYTES = 24
"""The Standard Webhooks specification's minimum for a symmetric signing secret."""
MAX_WEBHOOK_SECRET_BYTES = 64
_EXCERPT_CHARS = 200


def check_http_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL; else ValueError."""
    try:
        parsed = httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as err:
        raise ValueError(f"not a valid URL: {err}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    return url


class OAuth2ClientCredentials(BaseModel):
    """An OAuth2 access token fetched with the client-credentials grant (RFC 6749 §4.4)."""

    model_config = ConfigDict(extra="forbid")

    token_url: str = Field(description="The authorization server's token endpoint.")
    client_id: str = Field(min_length=1, description="The client's identifier.")
    client_secret: SecretStr = Field(
        description="The client's secret; give it from the environment: ${PARTNER_SECRET}."
    )
    scopes: list[str] = Field(
        default_factory=list,
        description="Scopes asked for (sent space-separated); none: the server's default.",
    )
    client_auth: Literal["basic", "body"] = Field(
        default="basic",
        description="How the client authenticates to the token endpoint: `basic` (HTTP Basic, "
        "which RFC 6749 says every server supports) or `body` (client_id and client_secret "
        "in the form).",
    )

    @field_validator("token_url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return check_http_url(url)

    @field_validator("scopes")
    @classmethod
    def _check_scopes(cls, scopes: list[str]) -> list[str]:
        for scope in scopes:
            if not scope or any(c.isspace() or c in '"\\' for c in scope):
                raise ValueError(f"{scope!r} is not a scope (no spaces, quotes or backslashes)")
        return scopes


class RestAuth(BaseModel):
    """How requests are authenticated (besides the static `headers`)."""

    model_config = ConfigDict(extra="forbid")

    oauth2_client_credentials: OAuth2ClientCredentials = Field(
        description="A bearer token from an OAuth2 token endpoint, fetched with the "
        "client-credentials grant, cached until shortly before it expires and fetched again "
        "once when the destination answers 401 (the request is then sent once more). Token "
        "endpoint errors are retried: the records wait."
    )


def _safe_url(url: str) -> str:
    parsed = httpx.URL(url)
    shown = parsed.copy_with(username=None, password=None, query=None, fragment=None)
    return str(shown) + ("?…" if parsed.query else "")


class TokenSource:
    """The access token of one destination in a worker process, shared by its requests."""

    def __init__(self, config: OAuth2ClientCredentials, *, name: str) -> None:
        self.config = config
        self.name = name
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires: float | None = None  # monotonic() after which it is not used
        self._failure: RetryableExportError | None = None
        self._failed_at = 0.0
        self.fetches = 0
        """Tokens fetched (or tried) so far."""

    @property
    def shown_url(self) -> str:
        """The token endpoint as reasons name it (no query string or credentials)."""
        return _safe_url(self.config.token_url)

    async def token(self, client: httpx.AsyncClient) -> str:
        """A valid access token: the cached one, or one fetched now."""
        token = self._token
        if token is not None and (self._expires is None or monotonic() < self._expires):
            return token
        return await self._fetch_once(client, stale=token)

    async def refresh(self, client: httpx.AsyncClient, stale: str) -> str:
        """A token other than ``stale`` (which the destination refused): fetched now, unless
        another request already did while this one was waiting."""
        return await self._fetch_once(client, stale=stale)

    async def _fetch_once(self, client: httpx.AsyncClient, *, stale: str | None) -> str:
        asked = monotonic()
        async with self._lock:
            if self._token is not None and self._token != stale:
                return self._token  # fetched while this request waited for the lock
            if self._failure is not None and (
                self._failed_at >= asked or asked - self._failed_at < FAILURE_HOLD_S
            ):
                raise RetryableExportError(
                    self._failure.reason,
                    retry_after=self._failure.retry_after,
                    cause=self._failure.cause,
                )
            try:
                token, expires_in = await self._fetch(client)
            except RetryableExportError as err:
                self._failure, self._failed_at = err, monotonic()
                raise
            now = monotonic()
            self._token = token
            self._expires = (
                None
                if expires_in is None
                else now + expires_in - min(TOKEN_MARGIN_S, expires_in / 2)
            )
            self._failure = None
            return token

    def _form_and_headers(self) -> tuple[dict[str, str], dict[str, str]]:
        c = self.config
        form = {"grant_type": "client_credentials"}
        if c.scopes:
            form["scope"] = " ".join(c.scopes)
        headers = {"Accept": "application/json"}
        secret = c.client_secret.get_secret_value()
        if c.client_auth == "basic":
            # RFC 6749 §2.3.1: both form-urlencoded before they are joined with a colon.
            pair = f"{quote(c.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form |= {"client_id": c.client_id, "client_secret": secret}
        return form, headers

    async def _fetch(self, client: httpx.AsyncClient) -> tuple[str, float | None]:
        self.fetches += 1
        form, headers = self._form_and_headers()
        where = f"token endpoint {self.shown_url}"
        try:
            response = await client.post(self.config.token_url, data=form, headers=headers)
        except httpx.TimeoutException as err:
            raise RetryableExportError(
                f"{where} did not answer in time ({type(err).__name__}); records wait until it "
                "does",
                cause="unavailable",
            ) from err
        except httpx.TransportError as err:
            raise RetryableExportError(
                f"{where} could not be reached ({type(err).__name__}: "
                f"{err or 'connection failed'}); records wait until it can",
                cause="unavailable",
            ) from err
        status = response.status_code
        answer = self._answer(response)
        if status >= 500 or status in (408, 429):
            retry_after = response.headers.get("Retry-After")
            wait = float(retry_after) if retry_after and retry_after.isdigit() else None
            raise RetryableExportError(
                f"{where} answered {status}{answer}; records wait until it gives a token",
                retry_after=wait,
                cause="unavailable" if status >= 500 else "other",
            )
        if status >= 300:
            raise RetryableExportError(
                f"{where} refused client {self.config.client_id!r} ({status}{answer}); check "
                f"destination {self.name}'s auth.oauth2_client_credentials (client_id, the "
                "client_secret's environment variable, scopes, client_auth); records wait "
                "until the token endpoint accepts it"
            )
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RetryableExportError(
                f"{where} answered {status} without an access_token; records wait until it "
                "gives one"
            )
        token_type = body.get("token_type", "Bearer") if isinstance(body, dict) else "Bearer"
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise RetryableExportError(
                f"{where} gave a token of type {token_type!r}, not Bearer; only bearer tokens "
                "are supported: check the token endpoint and client"
            )
        expires_in = body.get("expires_in") if isinstance(body, dict) else None
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
            expires_in = None  # no lifetime given: used until the destination refuses it
        return token, None if expires_in is None else float(expires_in)

    def _answer(self, response: httpx.Response) -> str:
        """``: invalid_client (the description)`` from an OAuth2 error answer, or an excerpt."""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            text = body["error"]
            if isinstance(body.get("error_description"), str):
                text += f" ({body['error_description']})"
        else:
            text = " ".join(response.text.split())
        secret = self.config.client_secret.get_secret_value()
        if secret:
            text = text.replace(secret, "***")
        if len(text) > _EXCERPT_CHARS:
            text = text[:_EXCERPT_CHARS] + "…"
        return f": {text}" if text else ""


def webhook_secret_bytes(secret: str) -> bytes:
    """The key of a Standard Webhooks secret (``whsec_`` + base64); ValueError if it is not one.

    The message never shows the secret."""
    encoded = secret.strip().removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "is not a Standard Webhooks secret: expected whsec_ followed by base64"
        ) from None
    if not MIN_WEBHOOK_SECRET_BYTES <= len(key) <= MAX_WEBHOOK_SECRET_BYTES:
        raise ValueError(
            f"decodes to {len(key)} bytes; a Standard Webhooks secret has "
            f"{MIN_WEBHOOK_SECRET_BYTES} to {MAX_WEBHOOK_SECRET_BYTES}"
        )
    return key


def webhook_id(idempotency_key: str) -> str:
    """The ``webhook-id`` of a record: its idempotency key with ``%`` and ``.`` escaped."""
    return idempotency_key.replace("%", "%25").replace(".", "%2E")


class WebhookSigner:
    """Signs requests the Standard Webhooks way (symmetric, ``v1``)."""

    def __init__(self, secret: SecretStr) -> None:
        self._key = webhook_secret_bytes(secret.get_secret_value())

    def headers(
        self, idempotency_key: str, body: bytes, *, now: float | None = None
    ) -> dict[str, str]:
        """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` of one request."""
        msg_id = webhook_id(idempotency_key)
        timestamp = str(int(time.time() if now is None else now))
        signed = f"{msg_id}.{timestamp}.".encode() + body
        digest = hmac.new(self._key, signed, hashlib.sha256).digest()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii"),
        }
