"""How ingest talks to Kafka: consumer options from the config, and no topic auto-creation.

aiokafka 0.14 has no ``allow_auto_create_topics`` option: its metadata requests always ask the
broker to create a missing topic (when the broker allows it). A consumer must never create the
topics it reads — a deleted topic would come back empty under the consumer, and an operator's
own create would then fail. :func:`never_create_topics` makes every aiokafka client started in
the calling task (and the tasks it starts, which is where aiokafka refreshes metadata) send
``allow_auto_topic_creation=false``; clients elsewhere in the process keep aiokafka's default.

Before starting a consumer, :func:`check_brokers` asks each bootstrap server for its API
versions with a short timeout: aiokafka itself waits its full request timeout (40 s) on a
server that accepts connections but never answers, and logs an error per attempt. The check
says in one line what is wrong (``cannot reach Kafka at HOST:PORT: connection refused``,
``the server at HOST:PORT is not a Kafka server (…)``) within :data:`CHECK_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from contextvars import ContextVar

import aiokafka.client
from aiokafka.conn import collect_hosts
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from courier.config import KafkaConfig, KafkaSecurity

_CREATE_TOPICS: ContextVar[bool] = ContextVar("courier_kafka_create_topics", default=True)


def _metadata_request(
    topics: list[str] | None = None, allow_auto_topic_creation: bool | None = None
) -> MetadataRequest:
    if allow_auto_topic_creation is None:
        allow_auto_topic_creation = _CREATE_TOPICS.get()
    return MetadataRequest(topics, allow_auto_topic_creation=allow_auto_topic_creation)


def never_create_topics() -> None:
    """Kafka clients started from now on in this task (and its child tasks) create no topics."""
    aiokafka.client.MetadataRequest = _metadata_request
    _CREATE_TOPICS.set(False)


def consumer_options(kafka: KafkaConfig, *, group: bool = True) -> dict[str, object]:
    """aiokafka options for the configured brokers, security and read semantics.

    ``group``: add the options of a group member (poll interval, rebalance timeout).
    """
    sec = kafka.security
    options: dict[str, object] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": sec.protocol,
        "isolation_level": kafka.isolation_level,
        "metadata_max_age_ms": int(kafka.metadata_refresh.total_seconds() * 1000),
    }
    if group:
        poll_interval_ms = int(kafka.max_poll_interval.total_seconds() * 1000)
        options["max_poll_interval_ms"] = poll_interval_ms
        # As the Java client: members have as long to finish a revoke as between polls.
        options["rebalance_timeout_ms"] = poll_interval_ms
    context = _ssl_context(sec)
    if context is not None:
        options["ssl_context"] = context
    if sec.protocol.startswith("SASL"):
        options["sasl_mechanism"] = sec.sasl_mechanism
        options["sasl_plain_username"] = sec.sasl_username
        options["sasl_plain_password"] = (
            sec.sasl_password.get_secret_value() if sec.sasl_password else None
        )
    return options


def _ssl_context(sec: KafkaSecurity) -> ssl.SSLContext | None:
    if sec.protocol not in ("SSL", "SASL_SSL"):
        return None
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None,
        certfile=str(sec.ssl_certfile) if sec.ssl_certfile else None,
        keyfile=str(sec.ssl_keyfile) if sec.ssl_keyfile else None,
    )
    return context


CHECK_TIMEOUT_S = 5.0
"""Longest :func:`check_brokers` waits for a server to connect and answer."""

_API_VERSIONS = 18
_MAX_RESPONSE = 1 << 20


class KafkaUnreachable(Exception):
    """No bootstrap server answered as a Kafka broker; the message says why, in one line."""


def _api_versions_request(correlation_id: int) -> bytes:
    """An ``ApiVersions`` v0 request, which every broker answers before authentication."""
    client_id = b"courier-check"
    header = struct.pack(">hhih", _API_VERSIONS, 0, correlation_id, len(client_id)) + client_id
    return struct.pack(">i", len(header)) + header


async def _check_broker(host: str, port: int, sec: KafkaSecurity, timeout: float) -> str | None:
    """None if ``host:port`` answers as a Kafka broker, else why not (one phrase)."""
    where = f"{host}:{port}"
    writer: asyncio.StreamWriter | None = None
    connected = False
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=_ssl_context(sec))
            connected = True
            writer.write(_api_versions_request(correlation_id=7))
            await writer.drain()
            head = await reader.readexactly(8)
            size, correlation_id = struct.unpack(">ii", head)
    except TimeoutError:
        if connected:
            return (
                f"the server at {where} is not a Kafka server (no answer to a Kafka request "
                f"within {timeout:.0f}s)"
            )
        return f"cannot reach Kafka at {where}: no connection within {timeout:.0f}s"
    except ssl.SSLError as err:
        return f"TLS with Kafka at {where} failed ({err.reason or err}); check kafka.security"
    except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
        hint = "" if sec.protocol in ("SSL", "SASL_SSL") else ", or expects TLS"
        return (
            f"the server at {where} is not a Kafka server (it closed the connection when sent "
            f"a Kafka request{hint})"
        )
    except ConnectionRefusedError:
        return f"cannot reach Kafka at {where}: connection refused (is the broker running?)"
    except socket.gaierror:
        return f"cannot reach Kafka at {where}: unknown host"
    except OSError as err:
        return f"cannot reach Kafka at {where}: {err.strerror or err}"
    finally:
        if writer is not None:
            writer.close()
    if head.startswith(b"HTTP"):
        return f"the server at {where} is not a Kafka server (it answered as an HTTP server)"
    if not 4 <= size <= _MAX_RESPONSE or correlation_id != 7:
        return (
            f"the server at {where} is not a Kafka server (it answered a Kafka request with "
            "something else)"
        )
    return None


async def check_brokers(kafka: KafkaConfig, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Return once a bootstrap server answers as a Kafka broker (within ``timeout``).

    Raises :class:`KafkaUnreachable` saying, for each server, why it does not.
    """
    hosts = [(host, port) for host, port, _ in collect_hosts(kafka.bootstrap_servers, False)]
    reasons = await asyncio.gather(
        *(_check_broker(host, port, kafka.security, timeout) for host, port in hosts)
    )
    if any(reason is None for reason in reasons):
        return
    raise KafkaUnreachable(
        "; ".join(r for r in reasons if r is not None) + "; check kafka.bootstrap_servers"
    )
