"""Helpers of the per-key ordering tests: a slow, random receiver, and order checks."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import sys
from collections import defaultdict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tests.faults.ledger import FaultReceiver, Sent

KEYS = 5
UPDATES = 50


class RandomReceiver(FaultReceiver):
    """Answers each request after a random delay, and a share of them 503 (no effect).

    ``spans`` holds, per path, when each request arrived and was answered, 503s included.
    """

    def __init__(self, *, max_delay: float, unavailable: float, seed: int = 9) -> None:
        super().__init__()
        self.max_delay = max_delay
        self.unavailable = unavailable
        self.spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self._random = random.Random(seed)

    async def _handle(self, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        await asyncio.sleep(self._random.uniform(0, self.max_delay))
        if self._random.random() < self.unavailable:
            response = Response("busy", status_code=503)
        else:
            response = await super()._handle(request)
        self.spans[request.url.path].append((arrived, loop.time()))
        return response


def produced_by_key(sent: list[Sent]) -> dict[str, list[int]]:
    """Offsets of each key in the order Kafka has them."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for record in sorted(sent, key=lambda s: (s.partition, s.offset)):
        assert record.key is not None
        by_key[record.key.decode()].append(record.offset)
    return dict(by_key)


def arrived_by_key(receiver: FaultReceiver, prefix: str) -> dict[str, list[int]]:
    """Offsets of each key's effects at ``prefix``, in the order the receiver took them."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for request in receiver.effect_requests(prefix):
        envelope = json.loads(request.body)
        by_key[envelope["key"]].append(envelope["offset"])
    return dict(by_key)


def overlapping(receiver: RandomReceiver, prefix: str) -> list[str]:
    """Paths (one per key) where a request arrived before the previous one was answered."""
    found = []
    for path, spans in receiver.spans.items():
        if not path.startswith(prefix):
            continue
        ordered = sorted(spans)
        if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(ordered)):
            found.append(path)
    return found


def keys_at_once(receiver: RandomReceiver, prefix: str) -> int:
    """Requests that arrived while a request of another key (path) was being answered."""
    spans = sorted(
        (arrived, answered, path)
        for path, found in receiver.spans.items()
        if path.startswith(prefix)
        for arrived, answered in found
    )
    return sum(
        1
        for i, (arrived, _, path) in enumerate(spans)
        if any(other != path and answered > arrived for _, answered, other in spans[:i])
    )


def updates(prefix: str) -> list[tuple[bytes | None, bytes | None]]:
    """``UPDATES`` updates of each of ``KEYS`` keys, interleaved."""
    return [
        (f"{prefix}k{k}".encode(), json.dumps({"update": i}).encode())
        for i in range(UPDATES)
        for k in range(KEYS)
    ]


def rest(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "rest",
        "url": url,
        "max_concurrency": 8,
        "retry": {"initial_interval": "100ms", "maximum_interval": "1s"},
        "rate_control": {"circuit_breaker": False},
        **extra,
    }


async def courier_cli(*args: str) -> tuple[int, str]:
    """Run ``courier ARGS`` as a process; its exit code and output (stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "courier.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "400"},
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def true(value: bool) -> bool:
    return value
