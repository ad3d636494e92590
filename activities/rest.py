"""REST destination: one HTTP request per record, statuses sorted into success / retry / fail.

Every request carries ``Idempotency-Key: <idempotency key>`` (the workflow ID), so a receiver
that honours the header sees one effect per record however often Temporal retries.

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
import email.utils
import json
import re
import string
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Literal
from urllib.parse import quote

import httpx
from pydantic import Field, field_validator, model_validator

from activities.base import DestinationConfig
from activities.encoding import record_envelope
from activities.errors import Cause, PermanentExportError, RetryableExportError
from courier.durations import Duration, format_duration
from workflows.types import OutgoingRecord

URL_PLACEHOLDERS = ("key", "topic", "partition", "offset")
IDEMPOTENCY_HEADER = "Idempotency-Key"
BATCH_CONCURRENCY = 8
"""Requests of one batch in flight at once."""
FAIL_FAST_AFTER = BATCH_CONCURRENCY
"""Requests in a row that find the destination unavailable after which the rest of a batch is
not sent (the batch is retried whole): a down endpoint costs a few connection attempts per
batch, not one per record."""

_BODY_EXCERPT_CHARS = 200
_BODY_EXCERPT_BYTES = 4096

StatusSpec = int | str
"""An HTTP status code (``404``) or a status class (``"5xx"``)."""


class RestConfig(DestinationConfig):
    """An HTTP endpoint that receives one request per record."""

    def create(self) -> RestDestination:
        """The destination this config describes (not yet opened)."""
        return RestDestination(self)

    kind: Literal["rest"] = Field(description="Always `rest`.")
    method: Literal["POST", "PUT", "PATCH", "DELETE", "GET"] = Field(
        default="POST", description="HTTP method of every request."
    )
    url: str = Field(
        description="Request URL; may contain {key}, {topic}, {partition} and {offset}, "
        "which are filled per record (key and topic URL-quoted; a missing key is empty)."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra request headers, e.g. Authorization: Bearer ${TOKEN}. "
        "Idempotency-Key is always set by Courier.",
    )
    body: Literal["raw", "json"] = Field(
        default="json",
        description="`raw` sends the record value bytes as they are; `json` sends Courier's "
        "record envelope (see the README): coordinates, key, value (embedded as JSON when it "
        "parses), headers, each with its encoding.",
    )
    content_type: str = Field(
        default="application/json",
        description="Content-Type of `raw` bodies (`json` bodies are always application/json).",
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

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(url) if name is not None]
        except ValueError as err:
            raise ValueError(
                f"not a valid URL template ({err}); write braces as {{{{ }}}}"
            ) from None
        unknown = sorted({f for f in fields if f not in URL_PLACEHOLDERS})
        if unknown:
            raise ValueError(
                f"unknown placeholder {', '.join('{' + f + '}' for f in unknown)}; "
                f"allowed: {', '.join('{' + p + '}' for p in URL_PLACEHOLDERS)}"
            )
        try:
            sample = url.format(key="k", topic="t", partition=0, offset=0)
            parsed = httpx.URL(sample)
        except (ValueError, httpx.InvalidURL) as err:
            raise ValueError(f"not a valid URL: {err}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("must be an absolute http:// or https:// URL")
        return url

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


class RestDestination:
    """Sends each record as one HTTP request through a client shared by the worker process."""

    def __init__(
        self, config: RestConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        """Create the process-wide HTTP client."""
        c = self.config
        timeout = httpx.Timeout(
            connect=c.connect_timeout.total_seconds(),
            read=c.read_timeout.total_seconds(),
            write=c.read_timeout.total_seconds(),
            pool=None,  # waiting for a free connection is bounded by the activity timeout
        )
        self._client = httpx.AsyncClient(
            transport=self._transport,
            timeout=timeout,
            headers={"User-Agent": "courier"},
            follow_redirects=False,
        )

    async def close(self) -> None:
        """Close the HTTP client and its connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def write(self, batch: Sequence[OutgoingRecord]) -> str:
        """Send one request per record; return e.g. ``HTTP 201`` or ``3 × HTTP 200``."""
        if self._client is None:
            raise RuntimeError("RestDestination.write() called before open()")
        client = self._client
        limit = asyncio.Semaphore(BATCH_CONCURRENCY)
        unavailable_in_a_row = 0
        stop = False

        async def send(item: OutgoingRecord) -> int:
            nonlocal unavailable_in_a_row, stop
            async with limit:
                if stop:
                    raise _NotSent
                try:
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
            raise _worst(errors, len(batch), not_sent)
        counts = Counter(r for r in results if isinstance(r, int))
        return ", ".join(
            f"HTTP {status}" if n == 1 and len(batch) == 1 else f"{n} × HTTP {status}"
            for status, n in sorted(counts.items())
        )

    def build_request(self, client: httpx.AsyncClient, item: OutgoingRecord) -> httpx.Request:
        """The HTTP request of one record."""
        c = self.config
        record = item.record
        url = c.url.format(
            key=quote(record.key.to_bytes(), safe="") if record.key is not None else "",
            topic=quote(record.topic, safe=""),
            partition=record.partition,
            offset=record.offset,
        )
        headers = {**c.headers, IDEMPOTENCY_HEADER: item.idempotency_key}
        if c.body == "json":
            content = json.dumps(record_envelope(record), ensure_ascii=False).encode("utf-8")
            content_type = "application/json"
        else:
            content = record.value.to_bytes() if record.value is not None else b""
            content_type = c.content_type
        if not any(name.lower() == "content-type" for name in c.headers):
            headers["Content-Type"] = content_type
        return client.build_request(c.method, url, headers=headers, content=content)

    async def _send(self, client: httpx.AsyncClient, item: OutgoingRecord) -> int:
        request = self.build_request(client, item)
        what = f"{request.method} {_safe_url(request.url)}"
        try:
            response = await client.send(request, stream=True)
            try:
                verdict = self.config.classify(response.status_code)
                body = b""
                if verdict != "success":
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) >= _BODY_EXCERPT_BYTES:
                            break
            finally:
                await response.aclose()
        except httpx.TransportError as err:
            reason = _transport_reason(err, self.config)
            raise RetryableExportError(f"{what} failed: {reason}", cause="unavailable") from err

        status = response.status_code
        if verdict == "success":
            return status
        answered = f"{what} answered {status} {response.reason_phrase}".rstrip()
        excerpt = _excerpt(body)
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
