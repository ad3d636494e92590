"""A real HTTP receiver for tests and the demo: records requests, dedups by Idempotency-Key.

Usage::

    async with Receiver() as receiver:               # uvicorn on 127.0.0.1, a free port
        receiver.script("/orders", first=[500])      # 500 once, then 200
        ... POST f"{receiver.url}/orders" ...
        assert receiver.effects("/orders") == 1

A request whose Idempotency-Key already had an effect is answered 200, counted as a duplicate
and has no new effect. A request has an effect when it is answered with a 2xx status; scripted
failures have none, so a retry of a failed request is not a duplicate.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from courier_devtools.loopback import LoopbackServer

IDEMPOTENCY_HEADER = "idempotency-key"


@dataclass
class Script:
    """How requests under a path prefix are answered."""

    first: list[int] = field(default_factory=list)
    """Statuses for the first requests, in order (duplicates do not consume them)."""
    then: int = 200
    """Status once ``first`` is used up (``then=503`` with no ``first``: always 503)."""
    retry_after: str | None = None
    """``Retry-After`` header sent with every non-2xx answer, e.g. ``"1"``."""
    delay: float = 0.0
    """Seconds to wait before answering."""
    answered: int = 0


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the receiver saw it, with the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    time: float
    status: int
    duplicate: bool
    client_port: int | None = None
    """The sender's TCP port: one per connection, so distinct ports count connections."""

    @property
    def idempotency_key(self) -> str | None:
        """The request's Idempotency-Key header, if any."""
        return self.headers.get(IDEMPOTENCY_HEADER)

    @property
    def had_effect(self) -> bool:
        """Answered 2xx and not a repeat of a key that already had its effect."""
        return not self.duplicate and 200 <= self.status < 300


class Receiver(LoopbackServer):
    """The recording HTTP receiver, served in-process."""

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.requests: list[ReceivedRequest] = []
        self.arrivals: list[str] = []
        """Paths of requests as they arrive, before any scripted delay or answer."""
        self._scripts: dict[str, Script] = {}
        self._effects: dict[str, ReceivedRequest] = {}  # by idempotency key
        self.app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._handle,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                )
            ]
        )

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    def script(
        self,
        prefix: str,
        *,
        first: list[int] | None = None,
        then: int = 200,
        retry_after: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Script answers for paths starting with ``prefix`` (the longest prefix wins)."""
        self._scripts[prefix] = Script(
            first=list(first or []), then=then, retry_after=retry_after, delay=delay
        )

    def effects(self, prefix: str = "/") -> int:
        """Unique effects (first 2xx answer per Idempotency-Key) on paths under ``prefix``."""
        return sum(1 for r in self.effect_requests(prefix))

    def effect_requests(self, prefix: str = "/") -> list[ReceivedRequest]:
        """The requests that had an effect on paths under ``prefix``, in arrival order."""
        return [r for r in self.requests if r.path.startswith(prefix) and r.had_effect]

    def duplicates(self, prefix: str = "/") -> int:
        """Requests under ``prefix`` that repeated an Idempotency-Key that had an effect."""
        return sum(1 for r in self.requests if r.path.startswith(prefix) and r.duplicate)

    def times(self, prefix: str = "/") -> list[float]:
        """Arrival times (``time.monotonic()``) of all requests under ``prefix``."""
        return [r.time for r in self.requests if r.path.startswith(prefix)]

    async def _handle(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.body()
        path = request.url.path
        self.arrivals.append(path)
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = headers.get(IDEMPOTENCY_HEADER)
        script = self._script_for(path)
        if script.delay:
            await asyncio.sleep(script.delay)

        if key is not None and key in self._effects:
            status, duplicate = 200, True
        else:
            duplicate = False
            if script.answered < len(script.first):
                status = script.first[script.answered]
            else:
                status = script.then
            script.answered += 1
        port = request.client.port if request.client else None
        seen = ReceivedRequest(
            request.method, path, headers, body, arrived, status, duplicate, client_port=port
        )
        self.requests.append(seen)
        if key is not None and not duplicate and 200 <= status < 300:
            self._effects[key] = seen

        response_headers = {}
        if script.retry_after is not None and not 200 <= status < 300:
            response_headers["Retry-After"] = script.retry_after
        text = "duplicate" if duplicate else f"status {status}"
        return Response(text, status_code=status, headers=response_headers)

    def _script_for(self, path: str) -> Script:
        matches = [p for p in self._scripts if path.startswith(p)]
        if not matches:
            return self._scripts.setdefault("", Script())
        return self._scripts[max(matches, key=len)]
