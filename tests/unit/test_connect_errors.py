"""What Courier says when Temporal or Kafka is not where the config points, and how fast.

Kafka's check runs against servers this test starts on loopback (silent, closing, HTTP, a
minimal Kafka); Temporal's messages are checked on the error texts its SDK really raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from courier.app.service import stop_on_signals
from courier.config.model import KafkaConfig, parse_config
from courier.core.stopping import unless_stopped
from courier.temporal.client import _CoreLogLine, describe_failure, short_error
from ingest import consumer as consumer_module
from ingest.consumer import Ingest
from ingest.kafka import KafkaUnreachable, check_brokers

# ---------------------------------------------------------------------------------- Temporal
# What temporalio 1.35's Client.connect raises (RuntimeError) for each kind of address.
RESET = (
    "Failed client connect: `get_system_info` call error after connection: Status { code: "
    'Unknown, message: "transport error", source: Some(tonic::transport::Error(Transport, '
    "hyper::Error(Io, Kind(ConnectionReset)))) }"
)
BROKEN_PIPE = (
    "Failed client connect: `get_system_info` call error after connection: Status { code: "
    'Unknown, message: "transport error", source: Some(tonic::transport::Error(Transport, '
    'hyper::Error(Io, Custom { kind: BrokenPipe, error: "stream closed because of a broken '
    'pipe" }))) }'
)
HTTP_404 = (
    "Failed client connect: `get_system_info` call error after connection: Status { code: "
    'Unimplemented, message: "grpc-status header missing, mapped from HTTP status code 404", '
    'metadata: MetadataMap { headers: {"server": "nginx"} }, source: None }'
)
REFUSED = (
    "Failed client connect: Server connection error: tonic::transport::Error(Transport, "
    'ConnectError(ConnectError("tcp connect error", 127.0.0.1:41509, Os { code: 111, kind: '
    'ConnectionRefused, message: "Connection refused" })))'
)
DNS = (
    "Failed client connect: Server connection error: tonic::transport::Error(Transport, "
    'ConnectError(ConnectError("dns error", Custom { kind: Uncategorized, error: "failed to '
    'lookup address information: Name or service not known" })))'
)

UNKNOWN_ISSUER = (
    "Failed client connect: Server connection error: tonic::transport::Error(Transport, "
    "ConnectError(Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }))"
)
OTHER_NAME = (
    "Failed client connect: Server connection error: tonic::transport::Error(Transport, "
    "ConnectError(Custom { kind: InvalidData, error: InvalidCertificate(NotValidForNameContext "
    '{ expected: DnsName("wrong.example"), presented: ["IpAddress(127.0.0.1)", '
    '"DnsName(\\"localhost\\")"] }) }))'
)
EXPIRED = (
    "Failed client connect: Server connection error: tonic::transport::Error(Transport, "
    "ConnectError(Custom { kind: InvalidData, error: InvalidCertificate(Expired) }))"
)

HUNG_UP = (
    "Failed client connect: `get_system_info` call error after connection: Status { code: "
    'Unknown, message: "transport error", source: Some(tonic::transport::Error(Transport, '
    'hyper::Error(Io, Custom { kind: UnexpectedEof, error: "peer closed connection without '
    "sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/"
    'index.html#unexpected-eof" }))) }'
)
# Written after the one line seen when Python's TLS server hung up on the first call
# ("Cancelled: operation was canceled"), in the Status form of the others.
CANCELLED = (
    "Failed client connect: `get_system_info` call error after connection: Status { code: "
    'Cancelled, message: "operation was canceled", source: None }'
)
# Written after rustls' Debug form of a received certificate_required alert (not observed here:
# Python's TLS server in tests/integration/test_temporal_tls.py hangs up instead, as HUNG_UP).
CERTIFICATE_REQUIRED = (
    "Failed client connect: `get_system_info` call error after connection: Status { code: "
    'Unknown, message: "transport error", source: Some(tonic::transport::Error(Transport, '
    "hyper::Error(Io, Custom { kind: InvalidData, error: AlertReceived(CertificateRequired) "
    "}))) }"
)


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (
            CERTIFICATE_REQUIRED,
            "Temporal at 127.0.0.1:5432 ended the TLS connection (it asked for a client "
            "certificate); check temporal.tls.client_cert and client_private_key (mutual TLS) "
            "and temporal.api_key",
        ),
        (
            UNKNOWN_ISSUER,
            "Temporal at 127.0.0.1:5432 presented a TLS certificate this client does not trust "
            "(unknown issuer); check temporal.tls.server_root_ca_cert (it must hold the CA that "
            "signed the server's certificate)",
        ),
        (
            OTHER_NAME,
            "the TLS certificate of Temporal at 127.0.0.1:5432 is not valid for the name "
            "wrong.example (it is for 127.0.0.1, localhost); check temporal.tls.domain (or the "
            "host in temporal.address)",
        ),
        (
            EXPIRED,
            "Temporal at 127.0.0.1:5432 presented a TLS certificate this client refused "
            "(expired); check the server's certificate and temporal.tls",
        ),
        (
            RESET,
            "the server at 127.0.0.1:5432 is not a Temporal server (Unknown: transport error: "
            "ConnectionReset); check temporal.address (or temporal.tls if the server expects "
            "TLS)",
        ),
        (
            BROKEN_PIPE,
            "the server at 127.0.0.1:5432 is not a Temporal server (Unknown: transport error: "
            "stream closed because of a broken pipe: BrokenPipe); check temporal.address (or "
            "temporal.tls if the server expects TLS)",
        ),
        (
            HTTP_404,
            "the server at 127.0.0.1:5432 is not a Temporal server (Unimplemented: grpc-status "
            "header missing, mapped from HTTP status code 404); check temporal.address (or "
            "temporal.tls if the server expects TLS)",
        ),
        (
            REFUSED,
            "cannot reach Temporal at 127.0.0.1:5432: connection refused; check "
            "temporal.address and that the Temporal server is running",
        ),
        (DNS, "cannot reach Temporal at 127.0.0.1:5432: unknown host; check temporal.address"),
    ],
)
def test_temporal_failures_are_one_line_without_rust_debug(raised: str, message: str) -> None:
    described = describe_failure("127.0.0.1:5432", RuntimeError(raised))
    assert described == message
    assert "{" not in described and "\n" not in described


@pytest.mark.parametrize("raised", [HUNG_UP, RESET, BROKEN_PIPE, CANCELLED])
def test_a_tls_server_hanging_up_after_the_handshake_points_at_client_certificates(
    raised: str,
) -> None:
    assert describe_failure("127.0.0.1:5432", RuntimeError(raised), tls=True) == (
        "Temporal at 127.0.0.1:5432 ended the TLS connection (it hung up); check "
        "temporal.tls.client_cert and client_private_key (mutual TLS) and temporal.api_key"
    )


def test_temporal_silence_is_a_timeout_message() -> None:
    assert describe_failure("h:1", TimeoutError()) == (
        "no answer from Temporal at h:1 within 5s; check temporal.address (a server that "
        "accepts connections but never answers is not a Temporal frontend)"
    )


def test_core_log_lines_lose_their_rust_debug() -> None:
    class Entry:
        def __init__(self, error: str) -> None:
            self.fields = {"error": error}

    error = f"Status {{ code: Unavailable, {REFUSED[REFUSED.index('message') :]}"
    line = logging.makeLogRecord(
        {"msg": "gRPC call poll retried 6 times", "temporal_log": Entry(error)}
    )
    _CoreLogLine().filter(line)
    assert line.msg == "gRPC call poll retried 6 times (Unavailable: Connection refused)"
    heartbeat = (
        'Error when recording heartbeat: Status { code: Unavailable, message: "tcp connect '
        'error", source: Some(tonic::transport::Error(Transport, ConnectError(ConnectError("tcp '
        'connect error", 127.0.0.1:56345, Os { code: 111, kind: ConnectionRefused, message: '
        '"Connection refused" })))) }'
    )
    inline = logging.makeLogRecord({"msg": heartbeat, "temporal_log": type("E", (), {})()})
    _CoreLogLine().filter(inline)
    assert inline.msg == (
        "Error when recording heartbeat: Unavailable: tcp connect error: Connection refused"
    )
    assert short_error("plain text") == "plain text"


# ------------------------------------------------------------------------------------- Kafka
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handle: Handler) -> AsyncIterator[str]:
    """A loopback server running ``handle`` per connection; yields ``host:port``."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def postgres_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.write(b"E\x00\x00\x00\x55SFATAL\x00C0A000\x00Munsupported frontend protocol\x00\x00")
    await writer.drain()
    writer.close()


async def kafka_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    request = await reader.readexactly(size)
    _, _, correlation_id = struct.unpack(">hhi", request[:8])
    body = struct.pack(">ihi", correlation_id, 0, 0)  # correlation ID, no error, no APIs
    writer.write(struct.pack(">i", len(body)) + body)
    await writer.drain()
    writer.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kafka_at(address: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=address, topics=["t"])


async def check_message(address: str, timeout: float = 5.0) -> str:
    with pytest.raises(KafkaUnreachable) as err:
        await check_brokers(kafka_at(address), timeout)
    return str(err.value)


async def test_kafka_check_passes_a_kafka_broker() -> None:
    async with serving(kafka_like) as address:
        await check_brokers(kafka_at(address))


async def test_kafka_check_names_what_answers_instead() -> None:
    async with serving(closing) as address:
        assert await check_message(address) == (
            f"the server at {address} is not a Kafka server (it closed the connection when "
            "sent a Kafka request, or expects TLS); check kafka.bootstrap_servers"
        )
    async with serving(http) as address:
        assert await check_message(address) == (
            f"the server at {address} is not a Kafka server (it answered as an HTTP server); "
            "check kafka.bootstrap_servers"
        )
    async with serving(postgres_like) as address:
        assert await check_message(address) == (
            f"the server at {address} is not a Kafka server (it answered a Kafka request with "
            "something else); check kafka.bootstrap_servers"
        )


async def test_kafka_check_gives_up_on_silence_in_its_timeout() -> None:
    async with serving(silent) as address:
        started = time.monotonic()
        message = await check_message(address, timeout=0.3)
        assert time.monotonic() - started < 2
    assert message == (
        f"the server at {address} is not a Kafka server (no answer to a Kafka request within "
        "0s); check kafka.bootstrap_servers"
    )


async def test_kafka_check_refused_and_any_good_server_suffices() -> None:
    port = free_port()
    assert await check_message(f"127.0.0.1:{port}") == (
        f"cannot reach Kafka at 127.0.0.1:{port}: connection refused (is the broker running?); "
        "check kafka.bootstrap_servers"
    )
    async with serving(kafka_like) as good:
        await check_brokers(kafka_at(f"127.0.0.1:{port},{good}"))


# ---------------------------------------------------------------------- stopping while waiting
def ingest_config(bootstrap: str = "127.0.0.1:1") -> Ingest:
    config = parse_config(
        {
            "kafka": {"bootstrap_servers": bootstrap, "topics": ["t"], "group": "g"},
            "destinations": [{"name": "out", "kind": "file", "path": "/nonexistent/out.jsonl"}],
            "routes": {"default": "out"},
        },
        environ={},
    )
    return Ingest(config, client=None)  # type: ignore[arg-type]  # never reaches Temporal


async def test_ingest_stops_at_once_while_checking_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    async def hangs(kafka: KafkaConfig) -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr(consumer_module, "check_brokers", hangs)
    ingest = ingest_config()
    run = asyncio.create_task(ingest.run())
    await asyncio.sleep(0.2)
    started = time.monotonic()
    ingest.stop()
    await asyncio.wait_for(run, 2)
    assert time.monotonic() - started < 0.5


async def test_ingest_logs_one_line_per_failed_kafka_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    ingest = ingest_config(f"127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING, logger="courier.ingest"):
        run = asyncio.create_task(ingest.run())
        await asyncio.sleep(0.5)
        ingest.stop()
        await asyncio.wait_for(run, 2)
    assert [r.getMessage() for r in caplog.records if r.name == "courier.ingest"] == [
        f"cannot reach Kafka at 127.0.0.1:{port}: connection refused (is the broker running?); "
        "check kafka.bootstrap_servers; retrying in 1s"
    ]


async def test_unless_stopped_cancels_the_wait() -> None:
    stop = asyncio.Event()
    assert await unless_stopped(asyncio.sleep(0, result="done"), stop) == "done"
    cancelled = asyncio.Event()

    async def forever() -> str:
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()
        return "never"

    asyncio.get_running_loop().call_later(0.1, stop.set)
    assert await asyncio.wait_for(unless_stopped(forever(), stop), 2) is None
    assert cancelled.is_set()


async def test_sigterm_sets_stop_while_the_block_runs() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = asyncio.Event()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 2)
    assert signal.getsignal(signal.SIGTERM) == before
