"""A TLS-terminating TCP proxy for tests: TLS on the outside, the plaintext server behind it.

gRPC over HTTP/2 passes through a TCP-level TLS terminator unchanged, so the local Temporal dev
server (plaintext) behind :func:`tls_proxy` is, to a client, a Temporal frontend that speaks TLS
with a certificate of our own test CA — what Temporal Cloud or a TLS-terminating load balancer
looks like. The proxy runs in the calling event loop and listens on 127.0.0.1 only.

It also reads, without changing them, the HTTP/2 request headers the client sends (HPACK-decoded
``HEADERS`` frames): :attr:`TLSProxy.headers` lets a test check what credentials a client really
sent (e.g. ``authorization: Bearer …`` for an API key).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from hpack import Decoder

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS, _CONTINUATION = 0x1, 0x9
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20


class _HeaderTap:
    """Decodes the request headers in one HTTP/2 client-to-server byte stream."""

    def __init__(self, sink: list[dict[str, str]]) -> None:
        self._buffer = b""
        self._preface = False
        self._block = b""
        self._decoder = Decoder()
        self._sink = sink
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self._buffer += data
        try:
            self._parse()
        except Exception:  # not HTTP/2 after all: stop reading, keep proxying
            self.broken = True

    def _parse(self) -> None:
        if not self._preface:
            if len(self._buffer) < len(_PREFACE):
                return
            if not self._buffer.startswith(_PREFACE):
                raise ValueError("not an HTTP/2 client")
            self._buffer = self._buffer[len(_PREFACE) :]
            self._preface = True
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            kind, flags = self._buffer[3], self._buffer[4]
            if len(self._buffer) < 9 + length:
                return
            payload = self._buffer[9 : 9 + length]
            self._buffer = self._buffer[9 + length :]
            if kind == _HEADERS:
                pad = 0
                if flags & _PADDED:
                    pad, payload = payload[0], payload[1:]
                if flags & _PRIORITY:
                    payload = payload[5:]
                self._block = payload[: len(payload) - pad]
            elif kind == _CONTINUATION:
                self._block += payload
            else:
                continue
            if flags & _END_HEADERS:
                headers = self._decoder.decode(self._block)
                self._sink.append({str(k): str(v) for k, v in headers})
                self._block = b""


class TLSProxy:
    """A running proxy: its ``address`` and the request headers it saw."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.headers: list[dict[str, str]] = []
        """Every HTTP/2 request's headers, in arrival order (pseudo-headers included)."""


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tap: _HeaderTap | None
) -> None:
    try:
        while data := await reader.read(65536):
            if tap is not None:
                tap.feed(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.asynccontextmanager
async def tls_proxy(
    target: tuple[str, int],
    *,
    cert: Path,
    key: Path,
    client_ca: Path | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[TLSProxy]:
    """Serve TLS (``cert`` chain, ``key``; ALPN h2) on a free port, forwarding to ``target``.

    ``client_ca``: require a client certificate signed by this CA (mutual TLS).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    tasks: set[asyncio.Task[None]] = set()
    proxy = TLSProxy("")

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        tap = _HeaderTap(proxy.headers)
        pipes = [
            asyncio.create_task(_pipe(client_r, server_w, tap)),
            asyncio.create_task(_pipe(server_r, client_w, None)),
        ]
        tasks.update(pipes)
        for pipe in pipes:
            pipe.add_done_callback(tasks.discard)
        await asyncio.gather(*pipes, return_exceptions=True)

    server = await asyncio.start_server(serve, host, 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    proxy.address = f"{host}:{port}"
    try:
        yield proxy
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
