"""REST destination: one HTTP request per record, statuses sorted into success / retry / fail.

Every request carries ``Idempotency-Key: <idempotency key>`` (the workflow ID), so a receiver
that honours the header sees one effect per record however often Temporal retries. With
``tracing.enabled`` it also carries the export activity's span as W3C ``traceparent`` (and
``tracestate``), unless the destination's ``headers`` set a ``traceparent`` of their own.
With ``auth`` it carries an OAuth2 bearer token, and with ``signing: standard-webhooks`` the
Standard Webhooks headers (``activities.rest_auth``); a 401 answer to a request with a token
gets one new token and the request is sent once more.

What is sent is shaped by the config: the URL and header values are templates with
``{expression}`` pieces (``activities.mapping``; URL pieces are percent-encoded), and the body
is the record envelope (``json``), the value bytes (``raw``), a JSONata ``mapping`` whose result
is sent as JSON, or a text ``template``. A mapping that fails for a record fails that record.

Classification of a response status, most specific first:

1. an exact code listed in ``success_statuses`` or ``retry_statuses`` (a code may not be in both);
2. a class (``"2xx"``) listed in ``success_statuses``, then in ``retry_statuses``;
3. anything else is a permanent failure: the workflow fails with a readable reason.

A retryable response with a ``Retry-After`` header (seconds or an HTTP date; sent with 429 and
503) sets :attr:`RetryableExportError.retry_after`. Transport errors (refused connection,
timeouts, resets) are retryable. Reasons never show the URL's query string or credentials.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import re
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio.lowlevel
import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)

from activities.base import DestinationConfig, Pace, no_pace
from activities.encoding import record_envelope
from activities.errors import Cause, ExportError, PermanentExportError, RetryableExportError
from activities.mapping import (
    Expression,
    MappingError,
    Template,
    check_mappings,
    record_data,
)
from activities.rest_auth import (
    RestAuth,
    TokenSource,
    WebhookSigner,
    check_http_url,
    webhook_secret_bytes,
)
from courier.core import tracing
from courier.core.durations import Duration, format_duration
from workflows.types import OutgoingRecord

URL_PLACEHOLDERS = ("key", "topic", "partition", "offset")
"""The record fields URL templates had before mappings; ``{key}`` of a null key is empty."""
IDEMPOTENCY_HEADER = "Idempotency-Key"
BATCH_CONCURRENCY = 8
"""Requests of one batch in flight at once."""
FAIL_FAST_AFTER = BATCH_CONCURRENCY
"""Requests in a row that find the destination unavailable after which the rest of a batch is
not sent (the batch is retried whole): a down endpoint costs a few connection attempts per
batch, not one per record."""

_BODY_EXCERPT_CHARS = 200
_BODY_EXCERPT_BYTES = 4096
_BODY_READ_BYTES = 64 * 1024
"""An answer's body is read up to this size, so that its connection serves the next request
(a connection whose answer was not read to the end is closed); a longer one is not downloaded:
its connection is closed instead."""

StatusSpec = int | str
"""An HTTP status code (``404``) or a status class (``"5xx"``)."""


class BodyMapping(BaseModel):
    """A body built from the record: give exactly one of ``mapping`` or ``template``."""

    model_config = ConfigDict(extra="forbid")

    mapping: str | None = Field(
        default=None,
        description="JSONata expression over the record (see the README); its result is sent "
        "as JSON (application/json).",
    )
    template: str | None = Field(
        default=None,
        description="Text with {expression} pieces, sent as it is (content_type, by default "
        "text/plain; charset=utf-8); write literal braces as {{ and }}.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> BodyMapping:
        if (self.mapping is None) == (self.template is None):
            raise ValueError("give exactly one of `mapping` or `template`")
        return self


def _body_form(value: Any) -> str:
    return "named" if isinstance(value, str) else "mapped"


Body = Annotated[
    Annotated[Literal["raw", "json"], Tag("named")] | Annotated[BodyMapping, Tag("mapped")],
    Discriminator(_body_form),
]


SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "x-auth-token"}
)
"""Request headers (lower case) whose values are credentials."""
WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
"""Set by ``signing: standard-webhooks``."""


class RestConfig(DestinationConfig):
    """An HTTP endpoint that receives one request per record."""

    @classmethod
    def credential_fields(cls, entry: Mapping[str, Any]) -> list[tuple[str, ...]]:
        """The headers that carry credentials (Authorization, API keys, cookies)."""
        headers = entry.get("headers")
        if not isinstance(headers, Mapping):
            return []
        return [("headers", name) for name in headers if str(name).lower() in SENSITIVE_HEADERS]

    def create(self) -> RestDestination:
        """The destination this config describes (not yet opened)."""
        return RestDestination(self)

    @classmethod
    def describe_preview(cls, shown: Mapping[str, Any]) -> list[str]:
        """The request of a preview: method and URL, headers, a blank line and the body."""
        lines = [f"{shown['method']} {shown['url']}"]
        lines += [f"{name}: {value}" for name, value in shown["headers"].items()]
        body = shown["body"]
        return [*lines, "", body if isinstance(body, str) else json.dumps(body)]

    kind: Literal["rest"] = Field(description="Always `rest`.")
    method: Literal["POST", "PUT", "PATCH", "DELETE", "GET"] = Field(
        default="POST", description="HTTP method of every request."
    )
    url: str = Field(
        description="Request URL, a template: each {expression} piece (JSONata over the record, "
        "e.g. {key}, {topic}, {partition}, {offset} or {value.customer.id}) is filled per "
        "record and percent-encoded; {key} of a null key is empty, any other piece that "
        "yields nothing fails the record. Write literal braces as {{ and }}."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra request headers, e.g. Authorization: Bearer ${TOKEN}; values are "
        "templates like url (not percent-encoded), e.g. X-Trace: '{headers.trace}'. "
        "Idempotency-Key is always set by Courier; with tracing enabled, so is traceparent "
        "(and tracestate), unless given here.",
    )
    body: Body = Field(
        default="json",
        description="`raw` sends the record value bytes as they are; `json` sends Courier's "
        "record envelope (see the README): coordinates, key, value (embedded as JSON when it "
        "parses), headers, each with its encoding; `{mapping: EXPR}` sends the result of a "
        "JSONata expression as JSON; `{template: TEXT}` sends text with {expression} pieces.",
    )
    content_type: str | None = Field(
        default=None,
        description="Content-Type of `raw` bodies (default application/json) and `template` "
        "bodies (default text/plain; charset=utf-8); `json` and `mapping` bodies are always "
        "application/json. A Content-Type in `headers` wins over both.",
    )
    connect_timeout: Duration = Field(
        default=timedelta(seconds=5), description="Longest wait for a connection."
    )
    read_timeout: Duration = Field(
        default=timedelta(seconds=10),
        description="Longest wait for the response; keep it below timeouts.attempt so a slow "
        "endpoint fails with this readable reason rather than an activity timeout.",
    )
    success_statuses: list[StatusSpec] = Field(
        default_factory=lambda: list[StatusSpec](["2xx"]),
        description='Statuses that mean the record was delivered: codes or classes like "2xx".',
    )
    retry_statuses: list[StatusSpec] = Field(
        default_factory=lambda: list[StatusSpec]([408, 429, "5xx"]),
        description="Statuses that are retried with backoff (honouring Retry-After); every "
        "status in neither list fails the record permanently.",
    )
    auth: RestAuth | None = Field(
        default=None,
        description="Authentication beyond static headers (section destinations[].auth): "
        "`oauth2_client_credentials` sends an OAuth2 bearer token as Authorization.",
    )
    signing: Literal["standard-webhooks"] | None = Field(
        default=None,
        description="`standard-webhooks`: every request is signed the Standard Webhooks way: "
        "webhook-id (the record's idempotency key, with . and % percent-encoded), "
        "webhook-timestamp (when it is sent, in seconds) and webhook-signature (v1, HMAC-SHA256 "
        "of id.timestamp.body with signing_secret).",
    )
    signing_secret: SecretStr | None = Field(
        default=None,
        description="The Standard Webhooks secret of `signing` (whsec_ followed by base64, "
        "24 to 64 bytes), from the environment: ${WEBHOOK_SECRET}.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        try:
            template = Template(url, "url")
        except ValueError:
            return url  # reported with the destination's name by _mappings_compile
        sample = check_http_url(template.sample("x"))
        parsed, other = httpx.URL(sample), httpx.URL(template.sample("y"))
        if (parsed.scheme, parsed.host, parsed.port) != (other.scheme, other.host, other.port):
            raise ValueError(
                "the scheme, host and port must be written out: {…} pieces may fill the path "
                "and query only (a record must not choose where its request goes)"
            )
        return url

    @model_validator(mode="after")
    def _mappings_compile(self) -> RestConfig:
        fields = {"url": ("template", self.url)}
        fields.update({f"headers.{n}": ("template", v) for n, v in self.headers.items()})
        if isinstance(self.body, BodyMapping) and self.body.mapping is not None:
            fields["body.mapping"] = ("expression", self.body.mapping)
        if isinstance(self.body, BodyMapping) and self.body.template is not None:
            fields["body.template"] = ("template", self.body.template)
        check_mappings(self.name, fields)
        return self

    @field_validator("success_statuses", "retry_statuses")
    @classmethod
    def _check_statuses(cls, specs: list[StatusSpec]) -> list[StatusSpec]:
        normalized: list[StatusSpec] = []
        for spec in specs:
            if isinstance(spec, str) and spec.strip().isdigit():
                spec = int(spec)
            if isinstance(spec, str):
                spec = spec.strip().lower()
            if isinstance(spec, int) and 100 <= spec <= 599:
                normalized.append(spec)
            elif isinstance(spec, str) and re.fullmatch(r"[1-5]xx", spec):
                normalized.append(spec)
            else:
                raise ValueError(
                    f'{spec!r} is neither a status code (100-599) nor a class like "5xx"'
                )
        return normalized

    @model_validator(mode="after")
    def _check_auth_and_signing(self) -> RestConfig:
        given = {name.lower() for name in self.headers}
        if self.auth is not None and "authorization" in given:
            raise ValueError(
                "headers.Authorization and auth both set Authorization; remove one of them"
            )
        if self.signing is None and self.signing_secret is not None:
            raise ValueError(
                "signing_secret is set without signing; add signing: standard-webhooks or remove it"
            )
        if self.signing is not None:
            if self.signing_secret is None:
                raise ValueError(
                    "signing: standard-webhooks needs signing_secret (from the environment: "
                    "signing_secret: ${WEBHOOK_SECRET})"
                )
            try:
                webhook_secret_bytes(self.signing_secret.get_secret_value())
            except ValueError as err:
                raise ValueError(f"signing_secret {err}") from None
            clash = sorted(given & set(WEBHOOK_HEADERS))
            if clash:
                raise ValueError(f"signing sets {', '.join(clash)}; remove it from headers")
        return self

    @model_validator(mode="after")
    def _check_overlap(self) -> RestConfig:
        both = {s for s in self.success_statuses if isinstance(s, int)} & {
            s for s in self.retry_statuses if isinstance(s, int)
        }
        if both:
            raise ValueError(
                f"statuses {sorted(both)} are in both success_statuses and retry_statuses"
            )
        return self

    def classify(self, status: int) -> Literal["success", "retry", "fail"]:
        """Sort a response status into success, retry or (permanent) fail."""
        if status in self.success_statuses:
            return "success"
        if status in self.retry_statuses:
            return "retry"
        status_class = f"{status // 100}xx"
        if status_class in self.success_statuses:
            return "success"
        if status_class in self.retry_statuses:
            return "retry"
        return "fail"


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait per a ``Retry-After`` value (seconds or HTTP date); None if invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _safe_url(url: httpx.URL) -> str:
    """The URL without credentials or query string, fit for failure reasons."""
    shown = url.copy_with(username=None, password=None, query=None, fragment=None)
    return str(shown) + ("?…" if url.query else "")


def _shown(request: httpx.Request) -> str:
    """``POST https://host/path?…``: the request as failure reasons name it."""
    return f"{request.method} {_safe_url(request.url)}"


def _excerpt(data: bytes) -> str:
    text = " ".join(data.decode("utf-8", errors="replace").split())
    if len(text) > _BODY_EXCERPT_CHARS:
        return text[:_BODY_EXCERPT_CHARS] + "…"
    return text


def _transport_reason(err: httpx.TransportError, config: RestConfig) -> str:
    if isinstance(err, httpx.ConnectTimeout):
        return f"could not connect within {format_duration(config.connect_timeout)}"
    if isinstance(err, httpx.ReadTimeout):
        return f"no response within {format_duration(config.read_timeout)}"
    if isinstance(err, httpx.TimeoutException):
        return f"timed out ({type(err).__name__})"
    if isinstance(err, httpx.ConnectError):
        return f"could not connect: {err or 'connection refused'}"
    return f"{type(err).__name__}: {err or 'transport error'}"


def _url_piece(text: str) -> str:
    return quote(text, safe="")


class RestDestination:
    """Sends each record as one HTTP request, on one of the worker process's kept-alive
    connections (at most ``max_concurrency``)."""

    def __init__(
        self, config: RestConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport
        self._opened = False
        self._clients: list[httpx.AsyncClient] = []
        self._idle: list[httpx.AsyncClient] = []
        self._in_flight = asyncio.Semaphore(config.max_concurrency)
        self._ssl: ssl.SSLContext | None = None
        self._timeout = httpx.Timeout(
            connect=config.connect_timeout.total_seconds(),
            read=config.read_timeout.total_seconds(),
            write=config.read_timeout.total_seconds(),
            pool=None,  # a lane has its connection to itself: it never waits for one
        )
        # Compiled once per worker process.
        self._url = Template(config.url, "url")
        self._legacy_url = all(
            e.text in URL_PLACEHOLDERS and "{" + e.text + "}" in config.url
            for e in self._url.expressions
        )
        self._headers = {
            name: Template(value, f"headers.{name}") if "{" in value or "}" in value else value
            for name, value in config.headers.items()
        }
        body = config.body
        self._body_mapping = (
            Expression(body.mapping, "body.mapping")
            if isinstance(body, BodyMapping) and body.mapping is not None
            else None
        )
        self._body_template = (
            Template(body.template, "body.template")
            if isinstance(body, BodyMapping) and body.template is not None
            else None
        )
        auth = config.auth
        self._tokens = (
            TokenSource(auth.oauth2_client_credentials, name=config.name) if auth else None
        )
        self._token_client: httpx.AsyncClient | None = None
        self._signer = (
            WebhookSigner(config.signing_secret)
            if config.signing is not None and config.signing_secret is not None
            else None
        )
        self._needs_data = (
            not self._legacy_url
            or self._body_mapping is not None
            or self._body_template is not None
            or any(isinstance(v, Template) for v in self._headers.values())
        )

    async def open(self) -> None:
        """Prepare the process-wide HTTP clients (each is created when first needed)."""
        if self._transport is None:
            self._ssl = httpx.create_ssl_context()  # loading the CA bundle once, not per lane
        # A process's first client imports httpcore, its first request loads anyio's asyncio
        # backend: 20-30 ms each here. Done now, a paced first request is not held up behind
        # them, to arrive together with the second.
        if not self._clients:
            self._idle.append(self._new_client())
        if self._tokens is not None and self._token_client is None:
            self._token_client = httpx.AsyncClient(
                transport=self._transport,
                verify=self._ssl or True,
                timeout=self._timeout,
                headers={"User-Agent": "courier"},
                follow_redirects=False,
            )
        await anyio.lowlevel.checkpoint()
        self._opened = True

    async def close(self) -> None:
        """Close the HTTP clients and their connections."""
        clients, self._clients, self._idle = self._clients, [], []
        token_client, self._token_client = self._token_client, None
        self._opened = False
        for client in clients:
            await client.aclose()
        if token_client is not None:
            await token_client.aclose()

    @contextlib.asynccontextmanager
    async def _lane(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client of its own for one request: at most ``max_concurrency`` per process.

        Each client keeps one connection. httpx's pool looks at every connection it holds on
        each request, so one pool of 16 connections cost twice the CPU per request of 16
        pools of one (2.8 against 1.4 ms on this project's 2-core machine)."""
        async with self._in_flight:
            client = self._idle.pop() if self._idle else self._new_client()
            try:
                yield client
            finally:
                if self._opened:  # taken next (LIFO): its connection is the warmest
                    self._idle.append(client)

    def _new_client(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=self._transport,
            verify=self._ssl or True,
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            headers={"User-Agent": "courier"},
            follow_redirects=False,
        )
        self._clients.append(client)
        return client

    async def write(self, batch: Sequence[OutgoingRecord], *, pace: Pace = no_pace) -> str:
        """Send one request per record; return e.g. ``HTTP 201`` or ``3 × HTTP 200``."""
        if not self._opened:
            raise RuntimeError("RestDestination.write() called before open()")
        limit = asyncio.Semaphore(BATCH_CONCURRENCY)
        unavailable_in_a_row = 0
        stop = False

        async def send(item: OutgoingRecord) -> int:
            nonlocal unavailable_in_a_row, stop
            async with limit:
                if not stop:
                    await pace(1)
                if stop:
                    raise _NotSent
                try:
                    async with self._lane() as client:
                        status = await self._send(client, item)
                except RetryableExportError as err:
                    if err.cause == "throttled":
                        stop = True  # the destination asks for less: send it nothing more now
                    elif err.cause == "unavailable":
                        unavailable_in_a_row += 1
                        stop = stop or unavailable_in_a_row >= FAIL_FAST_AFTER
                    raise
                except PermanentExportError:
                    unavailable_in_a_row = 0  # answered: the destination is up
                    raise
                unavailable_in_a_row = 0
                return status

        # Otherwise every request finishes: a partly delivered batch is retried whole, which
        # the idempotency keys make harmless.
        results = await asyncio.gather(*(send(item) for item in batch), return_exceptions=True)
        not_sent = sum(1 for r in results if isinstance(r, _NotSent))
        errors = [
            r for r in results if isinstance(r, BaseException) and not isinstance(r, _NotSent)
        ]
        if errors:
            error = _worst(errors, len(batch), not_sent)
            if isinstance(error, PermanentExportError) and len(batch) > 1:
                error.reached = any(isinstance(r, int) for r in results) or any(
                    not isinstance(e, PermanentExportError) or e.reached for e in errors
                )
            if isinstance(error, ExportError):
                error.confirmed = frozenset(
                    item.idempotency_key
                    for item, result in zip(batch, results, strict=True)
                    if isinstance(result, int)
                )
            raise error
        counts = Counter(r for r in results if isinstance(r, int))
        return ", ".join(
            f"HTTP {status}" if n == 1 and len(batch) == 1 else f"{n} × HTTP {status}"
            for status, n in sorted(counts.items())
        )

    def build_request(
        self, client: httpx.AsyncClient | None, item: OutgoingRecord
    ) -> httpx.Request:
        """The HTTP request of one record; MappingError when a mapping fails for it."""
        c = self.config
        record = item.record
        data = record_data(item) if self._needs_data else {}
        if self._legacy_url:
            url = c.url.format(
                key=quote(record.key.to_bytes(), safe="") if record.key is not None else "",
                topic=quote(record.topic, safe=""),
                partition=record.partition,
                offset=record.offset,
            )
        else:
            url = self._url.render(data, _url_piece, empty_if_null=frozenset({"key"}))
        headers: dict[str, str] = {}
        for name, value in self._headers.items():
            text = value if isinstance(value, str) else value.render(data)
            if isinstance(value, Template) and ("\r" in text or "\n" in text):
                problem = "produced a line break, which a header cannot hold"
                raise MappingError(f"headers.{name}", value.text, problem)
            headers[name] = text
        headers[IDEMPOTENCY_HEADER] = item.idempotency_key
        if self._body_mapping is not None:
            result = self._body_mapping.require(data)
            content = json.dumps(result, ensure_ascii=False).encode("utf-8")
            content_type = "application/json"
        elif self._body_template is not None:
            content = self._body_template.render(data).encode("utf-8")
            content_type = c.content_type or "text/plain; charset=utf-8"
        elif c.body == "json":
            content = json.dumps(record_envelope(record), ensure_ascii=False).encode("utf-8")
            content_type = "application/json"
        else:
            content = record.value.to_bytes() if record.value is not None else b""
            content_type = c.content_type or "application/json"
        if not any(name.lower() == "content-type" for name in c.headers):
            headers["Content-Type"] = content_type
        try:
            if client is None:
                return httpx.Request(c.method, url, headers=headers, content=content)
            return client.build_request(c.method, url, headers=headers, content=content)
        except (httpx.InvalidURL, ValueError) as err:
            raise MappingError("url", c.url, f"gave an invalid URL {url!r}: {err}") from err

    def preview(self, item: OutgoingRecord) -> dict[str, object]:
        """What this record's request would be, without sending it (``courier map``)."""
        request = self.build_request(None, item)
        if self._tokens is not None:
            shown_token = f"<token from {self._tokens.shown_url}>"
            request.headers["Authorization"] = f"Bearer {shown_token}"
        if self._signer is not None:
            request.headers.update(self._signer.headers(item.idempotency_key, request.content))
        body = request.content
        try:
            shown: object = body.decode("utf-8")
        except UnicodeDecodeError:
            shown = {"base64": base64.b64encode(body).decode("ascii")}
        return {
            "method": request.method,
            "url": str(request.url),
            "headers": {
                name.decode("latin-1"): value.decode("latin-1")
                for name, value in request.headers.raw
            },
            "body": shown,
        }

    async def _send(self, client: httpx.AsyncClient, item: OutgoingRecord) -> int:
        try:
            request = self.build_request(client, item)
        except MappingError as err:
            r = item.record
            raise PermanentExportError(
                f"{r.topic}/{r.partition}/{r.offset}: {err.reason}", reached=False
            ) from err
        tracing.inject_traceparent(request.headers, self.config.headers)
        token = await self._authorize(request, item)
        try:
            response, body = await self._exchange(client, request)
            if response.status_code == 401 and token is not None:
                # The token may have been revoked or expired early: one new token, one more try.
                token = await self._authorize(request, item, refused=token)
                response, body = await self._exchange(client, request)
        except httpx.TransportError as err:
            reason = _transport_reason(err, self.config)
            raise RetryableExportError(
                f"{_shown(request)} failed: {reason}", cause="unavailable"
            ) from err

        status = response.status_code
        verdict = self.config.classify(status)
        if verdict == "success":
            return status
        answered = f"{_shown(request)} answered {status} {response.reason_phrase}".rstrip()
        excerpt = _excerpt(body[:_BODY_EXCERPT_BYTES])
        if token is not None:
            excerpt = excerpt.replace(token, "***")
        if verdict == "fail":
            raise PermanentExportError(f"{answered}: {excerpt}" if excerpt else answered)
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        reason = answered
        if retry_after is not None:
            reason += f" (Retry-After {retry_after:g}s)"
        if excerpt:
            reason += f": {excerpt}"
        cause: Cause = "throttled" if status == 429 else "unavailable" if status >= 500 else "other"
        raise RetryableExportError(reason, retry_after=retry_after, cause=cause)

    async def _authorize(
        self, request: httpx.Request, item: OutgoingRecord, *, refused: str | None = None
    ) -> str | None:
        """Put the bearer token (a new one if ``refused``) and the signature on the request;
        return the token (None without ``auth``). Token endpoint errors are retryable."""
        token = None
        if self._tokens is not None:
            if self._token_client is None:
                raise RuntimeError("RestDestination used before open()")
            if refused is None:
                token = await self._tokens.token(self._token_client)
            else:
                token = await self._tokens.refresh(self._token_client, refused)
            request.headers["Authorization"] = f"Bearer {token}"
        if self._signer is not None:  # signed when sent: the timestamp is the attempt's
            request.headers.update(self._signer.headers(item.idempotency_key, request.content))
        return token

    @staticmethod
    async def _exchange(
        client: httpx.AsyncClient, request: httpx.Request
    ) -> tuple[httpx.Response, bytes]:
        """Send the request; its response and (the start of) its body, read and closed."""
        response = await client.send(request, stream=True)
        try:
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _BODY_READ_BYTES:
                    break
        finally:
            await response.aclose()
        return response, body


class _NotSent(Exception):
    """A request of a batch left unsent: the destination was down or asked for less."""


def _worst(errors: list[BaseException], size: int, not_sent: int = 0) -> BaseException:
    """The error a partly failed batch raises: permanent beats retryable beats unexpected."""
    if size == 1:
        return errors[0]
    unsent = f" ({not_sent} not sent)" if not_sent else ""
    prefix = f"{len(errors)} of {size} requests failed{unsent}; first: "
    permanent = [e for e in errors if isinstance(e, PermanentExportError)]
    if permanent:
        return PermanentExportError(prefix + permanent[0].reason)
    retryable = [e for e in errors if isinstance(e, RetryableExportError)]
    if retryable:
        waits = [e.retry_after for e in retryable if e.retry_after is not None]
        return RetryableExportError(
            prefix + retryable[0].reason,
            retry_after=max(waits) if waits else None,
            cause=retryable[0].cause,
        )
    return errors[0]
