"""Unit tests of the REST destination against httpx.MockTransport."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from activities.errors import PermanentExportError, RetryableExportError
from activities.rest import RestConfig, RestDestination, retry_after_seconds
from courier_devtools.receiver import Receiver
from workflows.types import Blob, Header, KafkaRecord, OutgoingRecord


def outgoing(
    *,
    key: bytes | None = b"order-1",
    value: bytes | None = b'{"total": 42}',
    offset: int = 7,
    headers: list[Header] | None = None,
) -> OutgoingRecord:
    record = KafkaRecord(
        topic="orders",
        partition=3,
        offset=offset,
        key=Blob.of(key) if key is not None else None,
        value=Blob.of(value) if value is not None else None,
        timestamp_ms=1_700_000_000_000,
        headers=headers or [],
    )
    return OutgoingRecord(idempotency_key=f"courier/g/orders/3/{offset}", record=record)


def config(**overrides: Any) -> RestConfig:
    fields: dict[str, Any] = {"name": "api", "kind": "rest", "url": "http://api.test/orders"}
    return RestConfig.model_validate(fields | overrides)


async def opened(
    handler: Callable[[httpx.Request], httpx.Response], **overrides: Any
) -> RestDestination:
    destination = RestDestination(config(**overrides), transport=httpx.MockTransport(handler))
    await destination.open()
    return destination


async def test_every_request_carries_the_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201)

    destination = await opened(handler, headers={"Idempotency-Key": "spoofed", "X-Api": "k"})
    detail = await destination.write([outgoing()])
    await destination.close()

    assert detail == "HTTP 201"
    assert seen[0].headers["Idempotency-Key"] == "courier/g/orders/3/7"
    assert seen[0].headers["X-Api"] == "k"
    assert seen[0].method == "POST"


async def test_batch_sends_one_request_per_record() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        return httpx.Response(200)

    destination = await opened(handler)
    detail = await destination.write([outgoing(offset=o) for o in (1, 2, 3)])

    assert detail == "3 × HTTP 200"
    assert sorted(keys) == [f"courier/g/orders/3/{o}" for o in (1, 2, 3)]


async def test_url_template_is_filled_and_key_quoted() -> None:
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(204)

    destination = await opened(
        handler, method="PUT", url="http://api.test/{topic}/{partition}/{offset}/items/{key}"
    )
    await destination.write([outgoing(key=b"a/b c?d")])
    await destination.write([outgoing(key=None)])

    assert urls == [
        "http://api.test/orders/3/7/items/a%2Fb%20c%3Fd",
        "http://api.test/orders/3/7/items/",
    ]


async def test_raw_body_is_the_value_bytes_with_content_type() -> None:
    bodies: list[tuple[bytes, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.content, request.headers["Content-Type"]))
        return httpx.Response(200)

    destination = await opened(handler, body="raw", content_type="application/octet-stream")
    await destination.write([outgoing(value=b"\xff\x00binary")])

    assert bodies == [(b"\xff\x00binary", "application/octet-stream")]


async def test_json_body_is_the_record_envelope() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Content-Type"] == "application/json"
        bodies.append(json.loads(request.content))
        return httpx.Response(200)

    destination = await opened(handler, body="json")
    await destination.write(
        [outgoing(headers=[Header("trace", Blob.of(b"abc")), Header("bin", Blob.of(b"\xfe"))])]
    )
    await destination.write([outgoing(value=b"not json")])
    await destination.write([outgoing(key=b"\xff\xfe", value=b"\x00\xff")])
    await destination.write([outgoing(value=None)])

    assert bodies[0] == {
        "topic": "orders",
        "topic_id": None,
        "partition": 3,
        "offset": 7,
        "key": "order-1",
        "key_encoding": "text",
        "value": {"total": 42},
        "value_encoding": "json",
        "timestamp_ms": 1_700_000_000_000,
        "headers": [
            {"name": "trace", "value": "abc", "value_encoding": "text"},
            {
                "name": "bin",
                "value": base64.b64encode(b"\xfe").decode(),
                "value_encoding": "base64",
            },
        ],
    }
    assert (bodies[1]["value"], bodies[1]["value_encoding"]) == ("not json", "text")
    assert bodies[2]["key"] == base64.b64encode(b"\xff\xfe").decode()
    assert bodies[2]["key_encoding"] == "base64"
    assert base64.b64decode(bodies[2]["value"]) == b"\x00\xff"
    assert bodies[2]["value_encoding"] == "base64"
    assert bodies[3]["value"] is None
    assert "value_encoding" not in bodies[3]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (204, "ok"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (599, "retry"),
        (400, "fail"),
        (404, "fail"),
        (422, "fail"),
        (301, "fail"),
    ],
)
async def test_default_status_sets(status: int, outcome: str) -> None:
    destination = await opened(lambda request: httpx.Response(status))
    if outcome == "ok":
        assert await destination.write([outgoing()]) == f"HTTP {status}"
    elif outcome == "retry":
        with pytest.raises(RetryableExportError):
            await destination.write([outgoing()])
    else:
        with pytest.raises(PermanentExportError):
            await destination.write([outgoing()])


async def test_configured_status_sets_exact_code_beats_class() -> None:
    statuses = iter([409, 501, 502, 404])
    destination = await opened(
        lambda request: httpx.Response(next(statuses)),
        success_statuses=["2xx", 409],
        retry_statuses=["5xx", 404],
    )
    assert await destination.write([outgoing()]) == "HTTP 409"
    with pytest.raises(RetryableExportError):
        await destination.write([outgoing()])
    with pytest.raises(RetryableExportError):
        await destination.write([outgoing()])
    with pytest.raises(RetryableExportError):
        await destination.write([outgoing()])


async def test_permanent_failure_reason_is_readable_and_hides_query() -> None:
    destination = await opened(
        lambda request: httpx.Response(422, text="field 'total' " + "x" * 500),
        url="http://api.test/orders?token=secret",
    )
    with pytest.raises(PermanentExportError) as caught:
        await destination.write([outgoing()])

    reason = caught.value.reason
    assert reason.startswith("POST http://api.test/orders?… answered 422 Unprocessable Entity: ")
    assert "field 'total' xxx" in reason
    assert "secret" not in reason
    assert len(reason) < 300


async def test_retry_after_seconds_is_honoured() -> None:
    destination = await opened(lambda request: httpx.Response(429, headers={"Retry-After": "7"}))
    with pytest.raises(RetryableExportError) as caught:
        await destination.write([outgoing()])

    assert caught.value.retry_after == 7
    assert "429 Too Many Requests" in caught.value.reason


async def test_retry_after_http_date_is_honoured() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    destination = await opened(lambda request: httpx.Response(503, headers={"Retry-After": when}))
    with pytest.raises(RetryableExportError) as caught:
        await destination.write([outgoing()])

    assert caught.value.retry_after is not None
    assert 25 <= caught.value.retry_after <= 31


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("0") == 0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=0) == 1445412480
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") is None
    assert retry_after_seconds(None) is None


async def test_retryable_without_retry_after_has_none() -> None:
    destination = await opened(lambda request: httpx.Response(500, text="boom"))
    with pytest.raises(RetryableExportError) as caught:
        await destination.write([outgoing()])

    assert caught.value.retry_after is None
    assert caught.value.reason == (
        "POST http://api.test/orders answered 500 Internal Server Error: boom"
    )


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "could not connect"),
        (httpx.ConnectTimeout(""), "could not connect within 5s"),
        (httpx.ReadTimeout(""), "no response within 10s"),
        (httpx.RemoteProtocolError("peer closed connection"), "RemoteProtocolError"),
    ],
)
async def test_transport_errors_are_retryable(error: Exception, words: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    destination = await opened(handler)
    with pytest.raises(RetryableExportError) as caught:
        await destination.write([outgoing()])

    assert caught.value.reason.startswith("POST http://api.test/orders failed: ")
    assert words in caught.value.reason


async def test_refused_connection_over_a_real_socket_is_retryable() -> None:
    destination = RestDestination(config(url="http://127.0.0.1:9/orders", connect_timeout="1s"))
    await destination.open()
    try:
        with pytest.raises(RetryableExportError) as caught:
            await destination.write([outgoing()])
    finally:
        await destination.close()
    assert "could not connect" in caught.value.reason


async def test_batch_with_one_permanent_failure_fails_permanently() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400 if request.headers["Idempotency-Key"].endswith("/2") else 500)

    destination = await opened(handler)
    with pytest.raises(PermanentExportError) as caught:
        await destination.write([outgoing(offset=o) for o in (1, 2, 3)])
    assert caught.value.reason.startswith("3 of 3 requests failed; first: POST")


async def test_a_down_destination_gets_a_few_requests_per_batch_not_one_per_record() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        raise httpx.ConnectError("connection refused", request=request)

    destination = await opened(handler)
    with pytest.raises(RetryableExportError) as caught:
        await destination.write([outgoing(offset=o) for o in range(500)])
    assert len(seen) < 20  # the first requests in a row that found it down, not 500
    assert caught.value.cause == "unavailable"
    assert caught.value.reason.startswith(
        f"{len(seen)} of 500 requests failed ({500 - len(seen)} not sent); first: POST"
    )


async def test_a_429_stops_the_rest_of_the_batch() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        return httpx.Response(429, headers={"Retry-After": "2"})

    destination = await opened(handler)
    with pytest.raises(RetryableExportError) as caught:
        await destination.write([outgoing(offset=o) for o in range(100)])
    assert len(seen) <= 8  # only those already in flight when the first 429 came
    assert caught.value.cause == "throttled" and caught.value.retry_after == 2


async def test_answers_between_failures_keep_the_batch_going() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(request.headers["Idempotency-Key"].rsplit("/", 1)[1])
        return httpx.Response(503 if offset % 2 else 200)

    destination = await opened(handler)
    with pytest.raises(RetryableExportError) as caught:
        await destination.write([outgoing(offset=o) for o in range(100)])
    assert caught.value.reason.startswith("50 of 100 requests failed; first:")  # all were sent


async def test_concurrent_batches_keep_their_connections() -> None:
    """Connections serve request after request: an answer's body is read to its end (a
    connection whose answer was not is closed), and the process keeps one connection for each
    of its ``max_concurrency`` requests in flight. Before, each request had a connection of its
    own."""
    writers, per_batch = 4, 100
    async with Receiver() as receiver:
        destination = RestDestination(config(url=f"{receiver.url}/orders", max_concurrency=writers))
        await destination.open()
        try:
            batches = [
                [outgoing(offset=w * per_batch + i) for i in range(per_batch)]
                for w in range(writers)
            ]
            for _ in range(2):  # the second round reuses the first round's connections
                await asyncio.gather(*(destination.write(b) for b in batches))
        finally:
            await destination.close()
    ports = {r.client_port for r in receiver.requests}
    assert len(receiver.requests) == 2 * writers * per_batch
    assert len(ports) <= writers, f"{len(ports)} connections for {writers} requests in flight"


async def test_requests_in_flight_never_exceed_max_concurrency() -> None:
    in_flight = most = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return httpx.Response(200)

    destination = RestDestination(config(max_concurrency=3), transport=httpx.MockTransport(handler))
    await destination.open()
    try:
        batches = [[outgoing(offset=b * 20 + i) for i in range(20)] for b in range(4)]
        await asyncio.gather(*(destination.write(b) for b in batches))
    finally:
        await destination.close()
    assert most == 3


async def test_each_request_waits_for_its_pace() -> None:
    paced: list[int] = []

    async def pace(count: int) -> None:
        paced.append(count)

    destination = await opened(lambda request: httpx.Response(200))
    await destination.write([outgoing(offset=o) for o in range(5)], pace=pace)
    assert paced == [1] * 5
