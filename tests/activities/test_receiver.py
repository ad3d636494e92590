"""The test receiver over a real connection: dedup, scripted failures, Retry-After, delay."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from courier_devtools.receiver import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as running:
        yield running


async def test_repeated_idempotency_key_has_one_effect(receiver: Receiver) -> None:
    async with httpx.AsyncClient(base_url=receiver.url) as client:
        first = await client.post("/orders", content=b"a", headers={"Idempotency-Key": "k1"})
        again = await client.post("/orders", content=b"a", headers={"Idempotency-Key": "k1"})
        other = await client.post("/orders/x", content=b"b", headers={"Idempotency-Key": "k2"})

    assert [first.status_code, again.status_code, other.status_code] == [200, 200, 200]
    assert receiver.effects("/orders") == 2
    assert receiver.effects("/orders/x") == 1
    assert receiver.duplicates() == 1
    assert [r.body for r in receiver.effect_requests()] == [b"a", b"b"]
    assert receiver.effect_requests()[0].idempotency_key == "k1"


async def test_scripted_500_then_200(receiver: Receiver) -> None:
    receiver.script("/flaky", first=[500])
    async with httpx.AsyncClient(base_url=receiver.url) as client:
        statuses = [
            (await client.put("/flaky/1", headers={"Idempotency-Key": "k"})).status_code
            for _ in range(3)
        ]
        unscripted = await client.post("/other", headers={"Idempotency-Key": "o"})

    assert statuses == [500, 200, 200]
    assert unscripted.status_code == 200
    assert receiver.effects("/flaky") == 1
    assert receiver.duplicates("/flaky") == 1
    assert [r.status for r in receiver.requests] == [500, 200, 200, 200]


async def test_429_with_retry_after_then_always_503(receiver: Receiver) -> None:
    receiver.script("/limited", first=[429], retry_after="2")
    receiver.script("/down", then=503)
    async with httpx.AsyncClient(base_url=receiver.url) as client:
        limited = await client.post("/limited", headers={"Idempotency-Key": "a"})
        allowed = await client.post("/limited", headers={"Idempotency-Key": "a"})
        down = [(await client.post("/down")).status_code for _ in range(3)]

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert allowed.status_code == 200
    assert "Retry-After" not in allowed.headers
    assert down == [503, 503, 503]
    assert receiver.effects("/down") == 0


async def test_delay_and_request_times(receiver: Receiver) -> None:
    receiver.script("/slow", delay=0.2)
    async with httpx.AsyncClient(base_url=receiver.url) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/slow", timeout=0.05)
        await client.post("/slow")

    times = receiver.times("/slow")
    assert len(times) == 2
    assert times[1] > times[0]


async def test_restart_on_same_port() -> None:
    receiver = Receiver()
    await receiver.start()
    port = receiver.port
    await receiver.stop()

    again = Receiver(port=port)
    async with again:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{again.url}/ping")).status_code == 200
    assert again.port == port
