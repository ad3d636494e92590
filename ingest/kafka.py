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
says in one line what is wrong and which setting to check (``cannot reach Kafka at HOST:PORT:
connection refused``, ``the server at HOST:PORT is not a Kafka server (…)``) within
:data:`CHECK_TIMEOUT_S`. With TLS it names an untrusted certificate (check
``kafka.security.ssl_cafile``), one issued for another name, or a broker that wants a client
certificate (check ``ssl_certfile`` and ``ssl_keyfile``); with SASL it also logs in, as
aiokafka would, and names a refused login (check ``sasl_username`` and ``sasl_password``) — where
aiokafka would log several errors and end with "Unable to bootstrap".
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from contextvars import ContextVar

import aiokafka.client
from aiokafka import errors as kafka_errors
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.protocol.metadata import MetadataRequest

from courier.config.model import KafkaConfig, KafkaSecurity

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
    options: dict[str, object] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "isolation_level": kafka.isolation_level,
        "metadata_max_age_ms": int(kafka.metadata_refresh.total_seconds() * 1000),
        **kafka.security.client_options(),
    }
    if group:
        poll_interval_ms = int(kafka.max_poll_interval.total_seconds() * 1000)
        options["max_poll_interval_ms"] = poll_interval_ms
        # As the Java client: members have as long to finish a revoke as between polls.
        options["rebalance_timeout_ms"] = poll_interval_ms
    return options


def producer_options(kafka: KafkaConfig) -> dict[str, object]:
    """aiokafka producer options for the configured brokers and security (TLS, SASL)."""
    options = consumer_options(kafka, group=False)
    del options["isolation_level"]  # a consumer's read semantics
    return options


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


Problem = tuple[str, str]
"""Why a server is not usable (one phrase), and what setting to check."""

_ADDRESS = "kafka.bootstrap_servers"


async def _check_broker(host: str, port: int, sec: KafkaSecurity, timeout: float) -> Problem | None:
    """None if ``host:port`` answers as a Kafka broker (and accepts our login), else why not."""
    where = f"{host}:{port}"
    writer: asyncio.StreamWriter | None = None
    connected = False
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=sec.ssl_context())
            connected = True
            writer.write(_api_versions_request(correlation_id=7))
            await writer.drain()
            head = await reader.readexactly(8)
            size, correlation_id = struct.unpack(">ii", head)
    except TimeoutError:
        if connected:
            return (
                f"the server at {where} is not a Kafka server (no answer to a Kafka request "
                f"within {timeout:.0f}s)",
                _ADDRESS,
            )
        return f"cannot reach Kafka at {where}: no connection within {timeout:.0f}s", _ADDRESS
    except ssl.SSLCertVerificationError as err:
        return _untrusted(host, where, err)
    except ssl.SSLError as err:
        return _tls_failed(where, sec, err)
    except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
        if sec.protocol in ("SSL", "SASL_SSL") and connected:
            # After a completed TLS handshake: with TLS 1.3 a server that wants a client
            # certificate may only hang up.
            return (
                f"Kafka at {where} closed the TLS connection when sent a Kafka request (does "
                "it want a client certificate?)",
                "kafka.security.ssl_certfile and ssl_keyfile, and kafka.bootstrap_servers",
            )
        hint = "" if sec.protocol in ("SSL", "SASL_SSL") else ", or expects TLS"
        return (
            f"the server at {where} is not a Kafka server (it closed the connection when sent "
            f"a Kafka request{hint})",
            _ADDRESS,
        )
    except ConnectionRefusedError:
        return (
            f"cannot reach Kafka at {where}: connection refused (is the broker running?)",
            _ADDRESS,
        )
    except socket.gaierror:
        return f"cannot reach Kafka at {where}: unknown host", _ADDRESS
    except OSError as err:
        return f"cannot reach Kafka at {where}: {err.strerror or err}", _ADDRESS
    finally:
        if writer is not None:
            writer.close()
    if head.startswith(b"HTTP"):
        return (
            f"the server at {where} is not a Kafka server (it answered as an HTTP server)",
            _ADDRESS,
        )
    if not 4 <= size <= _MAX_RESPONSE or correlation_id != 7:
        return (
            f"the server at {where} is not a Kafka server (it answered a Kafka request with "
            "something else)",
            _ADDRESS,
        )
    if sec.protocol.startswith("SASL"):
        return await _check_login(host, port, sec, timeout)
    return None


_CLIENT_CERTIFICATE = "kafka.security.ssl_certfile and ssl_keyfile"


def _tls_failed(where: str, sec: KafkaSecurity, err: ssl.SSLError) -> Problem:
    reason = str(err.reason or err)
    refused = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN")
    if any(alert in reason for alert in refused) and sec.ssl_certfile is None:
        return (
            f"Kafka at {where} asks for a client certificate (mutual TLS) and none is "
            f"configured ({reason})",
            _CLIENT_CERTIFICATE,
        )
    if any(alert in reason for alert in refused):
        return (
            f"Kafka at {where} refused this client's TLS certificate ({reason})",
            _CLIENT_CERTIFICATE + " (a certificate signed by a CA the brokers trust)",
        )
    return (
        f"TLS with Kafka at {where} failed ({reason})",
        "kafka.security.protocol (does this listener speak TLS?)",
    )


def _untrusted(host: str, where: str, err: ssl.SSLCertVerificationError) -> Problem:
    detail = err.verify_message or err.reason or str(err)
    if "mismatch" in detail.lower():
        return (
            f"the TLS certificate of Kafka at {where} is not valid for the name {host} ({detail})",
            f"that {_ADDRESS} uses a name the brokers' certificates were issued for",
        )
    return (
        f"Kafka at {where} presented a TLS certificate this client does not trust ({detail})",
        "kafka.security.ssl_cafile (it must hold the CA that signed the brokers' certificates)",
    )


async def _check_login(host: str, port: int, sec: KafkaSecurity, timeout: float) -> Problem | None:
    """None if the broker accepts the configured SASL login, else why not."""
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            conn = await create_conn(
                host,
                port,
                client_id="courier-check",
                request_timeout_ms=int(timeout * 1000),
                ssl_context=sec.ssl_context(),
                security_protocol=sec.protocol,
                sasl_mechanism=sec.sasl_mechanism,
                sasl_plain_username=sec.sasl_username,
                sasl_plain_password=(
                    sec.sasl_password.get_secret_value() if sec.sasl_password else None
                ),
            )
    except kafka_errors.SaslAuthenticationFailed as err:
        said = str(err.args[0]) if err.args else "authentication failed"
        return (
            f"Kafka at {where} refused the {sec.sasl_mechanism} login of user "
            f"{sec.sasl_username!r} ({said})",
            "kafka.security.sasl_username and sasl_password",
        )
    except kafka_errors.UnsupportedSaslMechanismError:
        return (
            f"Kafka at {where} does not offer the SASL mechanism {sec.sasl_mechanism}",
            "kafka.security.sasl_mechanism",
        )
    except (kafka_errors.KafkaError, OSError, TimeoutError) as err:
        return (
            f"the SASL login to Kafka at {where} failed ({type(err).__name__}: {err})",
            "kafka.security.protocol (does this listener use SASL?)",
        )
    conn.close()
    return None


async def check_brokers(kafka: KafkaConfig, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Return once a bootstrap server answers as a Kafka broker (within ``timeout``).

    Raises :class:`KafkaUnreachable` saying, for each server, why it does not.
    """
    hosts = [(host, port) for host, port, _ in collect_hosts(kafka.bootstrap_servers, False)]
    reasons = await asyncio.gather(
        *(_check_broker(host, port, kafka.security, timeout) for host, port in hosts)
    )
    problems = [reason for reason in reasons if reason is not None]
    if len(problems) < len(reasons):
        return
    checks = dict.fromkeys(check for _, check in problems)
    raise KafkaUnreachable(
        "; ".join(why for why, _ in problems) + "; check " + " and ".join(checks)
    )
