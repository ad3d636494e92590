"""``courier codec-server``: the Temporal UI's (and CLI's) remote codec endpoint.

With ``temporal.encryption`` on, Temporal holds only ciphertext; operators who may read records
point the UI at this server (UI setting "Codec Server", or ``TEMPORAL_CODEC_ENDPOINT`` of the UI
server, or ``temporal workflow show --codec-endpoint``). It implements Temporal's codec server
protocol: ``POST …/decode`` and ``POST …/encode`` take and return a ``Payloads`` message as
protobuf JSON; only the last path segment counts, and the ``X-Namespace`` header, when sent,
must name the configured namespace. Browsers call it cross-origin, so it answers CORS
preflights for the configured UI origins only.

It holds the keys: bind it where only those operators reach it (it listens on 127.0.0.1 by
default), e.g. behind the same authenticating proxy as the UI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from aiohttp import hdrs, web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from courier.app.service import stop_on_signals
from courier.config.model import CourierConfig
from courier.core.codec import AesGcmCodec, DecryptError, codec_for
from courier.core.output import Output

log = logging.getLogger("courier.codec_server")

ALLOWED_HEADERS = "content-type,x-namespace,authorization"


def build_app(codec: AesGcmCodec, *, namespace: str, origins: Sequence[str]) -> web.Application:
    """The codec endpoint for ``namespace`` with CORS for ``origins``."""
    allowed = set(origins)

    def cors(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin in allowed:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
            response.headers[hdrs.VARY] = "Origin"

    def fail(request: web.Request, status: int, message: str) -> web.Response:
        response = web.Response(status=status, text=message + "\n")
        cors(request, response)
        return response

    async def preflight(request: web.Request) -> web.Response:
        if request.headers.get(hdrs.ORIGIN) not in allowed:
            return web.Response(status=403, text="origin not allowed\n")
        response = web.Response()
        cors(request, response)
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = "POST, OPTIONS"
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ALLOWED_HEADERS
        response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = "600"
        return response

    async def handle(request: web.Request) -> web.Response:
        action = request.path.rstrip("/").rsplit("/", 1)[-1]
        if action not in ("encode", "decode"):
            return fail(request, 404, "POST to …/encode or …/decode")
        asked = request.headers.get("X-Namespace")
        if asked and asked != namespace:
            return fail(request, 400, f"this codec server serves namespace {namespace!r}")
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and origin not in allowed:
            return fail(request, 403, "origin not allowed")
        payloads = Payloads()
        try:
            json_format.Parse(await request.text(), payloads)
        except json_format.ParseError as err:
            return fail(request, 400, f"the body is not Payloads JSON: {err}")
        try:
            if action == "encode":
                result = await codec.encode(list(payloads.payloads))
            else:
                result = await codec.decode(list(payloads.payloads))
        except DecryptError as err:
            return fail(request, 400, str(err))
        response = web.Response(
            text=json_format.MessageToJson(Payloads(payloads=result)),
            content_type="application/json",
        )
        cors(request, response)
        return response

    app = web.Application()
    app.router.add_route("OPTIONS", "/{tail:.*}", preflight)
    app.router.add_route("POST", "/{tail:.*}", handle)
    return app


async def serve(app: web.Application, *, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set; OSError if the port is taken."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("codec server on http://%s:%d (POST /decode, /encode)", host, port)
        await stop.wait()
    finally:
        await runner.cleanup()


async def command(
    config: CourierConfig,
    path: Path,
    *,
    host: str,
    port: int,
    origins: Sequence[str],
    out: Output,
) -> int:
    """``courier codec-server``: serve with the config's keys until SIGINT or SIGTERM.

    Exit 2 if the config (read from ``path``) has no keys or the port cannot be listened on.
    """
    if config.temporal.encryption is None:
        return out.fail(
            f"{path}: temporal.encryption is not set, so there is nothing to decode; add the "
            "section (courier config reference describes it)",
            2,
        )
    app = build_app(
        codec_for(config.temporal.encryption), namespace=config.temporal.namespace, origins=origins
    )
    stop = asyncio.Event()
    try:
        with stop_on_signals(stop):
            await serve(app, host=host, port=port, stop=stop)
    except OSError as err:
        return out.fail(
            f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --port", 2
        )
    return 0
