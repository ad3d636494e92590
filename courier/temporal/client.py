"""Connecting to Temporal from Courier's config, and the SDK's logs and metrics.

A failed connection is one line saying what is wrong, never the SDK's Rust debug dump:
``cannot reach Temporal at HOST:PORT: connection refused`` (nothing listens there),
``the server at HOST:PORT is not a Temporal server (…)`` (something else answers, e.g. Kafka
or PostgreSQL), ``no answer from Temporal at HOST:PORT within 5s``, and so on.

The Temporal core (Rust) logs through Python's logging (logger ``temporalio.core``), one line
per event with its error shortened, so Courier's log setup (format, repeat summaries) covers it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from datetime import timedelta

from temporalio.client import Client
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError, TLSConfig

from courier.config.model import TemporalConfig
from courier.core import tracing as traces
from courier.core.codec import data_converter
from courier.core.tracing import TracingConfig

log = logging.getLogger("courier")

MAX_BACKOFF_S = 30.0
CONNECT_TIMEOUT_S = 5.0
"""Longest one connection attempt may take (TCP connect and the first call)."""
CORE_LOGGER = "temporalio.core"
"""Logger of the Temporal core's (Rust) log lines."""


class TemporalUnreachable(Exception):
    """The Temporal frontend could not be reached; the message says why and what to check."""


_CODE = re.compile(r"\bcode: ([A-Za-z]\w*|'[^']*')")
_TEXT = re.compile(r"\b(?:message|error): \"((?:[^\"\\]|\\.)*)\"")
_KIND = re.compile(r"\bkind: (\w+)|\bKind\((\w+)\)")


def short_error(text: str) -> str:
    """The gist of a Rust error's debug text: status code, messages and error kinds.

    ``Status { code: Unavailable, message: "tcp connect error", source: …Kind(ConnectionReset)…``
    becomes ``Unavailable: tcp connect error: ConnectionReset``.
    """
    parts: list[str] = []
    code = _CODE.search(text)
    if code:
        parts.append(code.group(1).strip("'"))
    for match in _TEXT.finditer(text):
        parts.append(match.group(1))
    for match in _KIND.finditer(text):
        parts.append(match.group(1) or match.group(2))
    seen: set[str] = set()
    unique = []
    for part in parts:  # "Connection refused" and "ConnectionRefused" say the same
        key = part.lower().replace(" ", "")
        if part and key not in seen:
            seen.add(key)
            unique.append(part)
    if unique:
        return ": ".join(unique)
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return first if len(first) <= 200 else first[:197] + "..."


_BAD_CERTIFICATE = re.compile(r"InvalidCertificate\((\w+)")
_EXPECTED_NAME = re.compile(r"expected: \w+\(\\?\"?([^)\"\\]+)")
_PRESENTED_NAMES = re.compile(r"(?:IpAddress|DnsName)\(\\*\"?([^)\"\\]+)")


def _certificate_problem(address: str, kind: str, text: str) -> str:
    """One line for a server certificate the client refused (rustls' ``InvalidCertificate``)."""
    if kind.startswith("NotValidForName"):
        expected = _EXPECTED_NAME.search(text)
        presented = text.partition("presented:")[2]
        names = ", ".join(_PRESENTED_NAMES.findall(presented)) or "other names"
        wanted = expected.group(1) if expected else "the name asked for"
        return (
            f"the TLS certificate of Temporal at {address} is not valid for the name {wanted} "
            f"(it is for {names}); check temporal.tls.domain (or the host in temporal.address)"
        )
    if kind == "UnknownIssuer":
        return (
            f"Temporal at {address} presented a TLS certificate this client does not trust "
            "(unknown issuer); check temporal.tls.server_root_ca_cert (it must hold the CA "
            "that signed the server's certificate)"
        )
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", kind).lower()
    return (
        f"Temporal at {address} presented a TLS certificate this client refused ({words}); "
        "check the server's certificate and temporal.tls"
    )


def describe_failure(address: str, err: BaseException, *, tls: bool = False) -> str:
    """One line: why connecting to Temporal at ``address`` failed and what to check.

    ``tls``: the client used TLS (then a server that hangs up after the handshake most likely
    wants a client certificate).
    """
    if isinstance(err, TimeoutError):
        return (
            f"no answer from Temporal at {address} within {CONNECT_TIMEOUT_S:.0f}s; check "
            "temporal.address (a server that accepts connections but never answers is not a "
            "Temporal frontend)"
        )
    text = str(err)
    lower = text.lower()
    if "connectionrefused" in lower or "connection refused" in lower:
        return (
            f"cannot reach Temporal at {address}: connection refused; check temporal.address "
            "and that the Temporal server is running"
        )
    if "dns error" in lower or "failed to lookup address" in lower:
        return f"cannot reach Temporal at {address}: unknown host; check temporal.address"
    certificate = _BAD_CERTIFICATE.search(text)
    if certificate:
        return _certificate_problem(address, certificate.group(1), text)
    code = _CODE.search(text)
    status = code.group(1) if code else ""
    # The hang-up shows as whichever the client noticed first: no close_notify, a reset, a
    # broken pipe, or its HTTP/2 connection cancelled under the first call.
    hung_up = status == "Cancelled" or any(
        sign in lower for sign in ("close_notify", "connectionreset", "brokenpipe", "unexpectedeof")
    )
    if "certificaterequired" in lower or (tls and "after connection" in lower and hung_up):
        # With TLS 1.3 the client's handshake completes before the server checks the client's
        # certificate: a server that wants one it did not get sends the certificate_required
        # alert or (some TLS stacks) just hangs up when the first request comes.
        said = "it asked for a client certificate" if "required" in lower else "it hung up"
        return (
            f"Temporal at {address} ended the TLS connection ({said}); check "
            "temporal.tls.client_cert and client_private_key (mutual TLS) and temporal.api_key"
        )
    if "certificate" in lower or "tls" in lower or "ssl" in lower:
        return f"TLS with Temporal at {address} failed ({short_error(text)}); check temporal.tls"
    if status in ("Unauthenticated", "PermissionDenied"):
        return (
            f"Temporal at {address} refused Courier's credentials ({short_error(text)}); check "
            "temporal.api_key and temporal.tls"
        )
    if "after connection" in lower and (
        status in ("Unknown", "Unimplemented", "Internal", "Cancelled")
        or "transport error" in lower
        or "protocol error" in lower
        or "grpc-status header missing" in lower
    ):
        return (
            f"the server at {address} is not a Temporal server ({short_error(text)}); check "
            "temporal.address (or temporal.tls if the server expects TLS)"
        )
    if "timed out" in lower or "timeout" in lower:
        return (
            f"cannot reach Temporal at {address}: connection timed out; check temporal.address "
            "and the network"
        )
    return f"cannot connect to Temporal at {address}: {short_error(text)}; check temporal.address"


def _tls(config: TemporalConfig) -> TLSConfig | bool:
    if config.tls is None:
        return False
    tls = config.tls
    return TLSConfig(
        server_root_ca_cert=tls.server_root_ca_cert.read_bytes()
        if tls.server_root_ca_cert
        else None,
        client_cert=tls.client_cert.read_bytes() if tls.client_cert else None,
        client_private_key=tls.client_private_key.read_bytes() if tls.client_private_key else None,
        domain=tls.domain,
    )


_RUST_DEBUG = re.compile(r"\b(?:Status \{|tonic::|Some\(|Os \{)")


class _CoreLogLine(logging.Filter):
    """Shortens Rust debug text in a Temporal core log line; appends its ``error`` field."""

    def filter(self, record: logging.LogRecord) -> bool:
        entry = getattr(record, "temporal_log", None)
        if entry is None:
            return True
        debug = _RUST_DEBUG.search(str(record.msg))
        if debug:
            text = str(record.msg)
            record.msg = (
                f"{text[: debug.start()].rstrip(' :')}: {short_error(text[debug.start() :])}"
            )
        try:
            fields = entry.fields
        except Exception:  # the SDK says this "should not happen"; keep the bare message
            return True
        error = fields.get("error") if isinstance(fields, dict) else None
        if error is not None:
            record.msg = f"{record.msg} ({short_error(str(error))})"
        return True


def _telemetry(metrics: PrometheusConfig | None = None) -> TelemetryConfig:
    """Core logs (warnings and errors) forwarded to Python's logging, and optional metrics."""
    core = logging.getLogger(CORE_LOGGER)
    if not any(isinstance(f, _CoreLogLine) for f in core.filters):
        core.addFilter(_CoreLogLine())
    return TelemetryConfig(
        logging=LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
            forwarding=LogForwardingConfig(
                logger=core,
                append_target_to_name=False,
                prepend_target_on_message=False,
                append_log_fields_to_message=False,
            ),
        ),
        metrics=metrics,
    )


def sdk_metrics_runtime(port: int, host: str = "127.0.0.1") -> Runtime:
    """A Temporal runtime serving the SDK's Prometheus metrics (task latencies, polls, slots).

    Its core logs go to Python's logging, as :func:`default_runtime`'s.
    """
    return Runtime(
        telemetry=_telemetry(
            PrometheusConfig(bind_address=f"{host}:{port}", durations_as_seconds=True)
        )
    )


@functools.cache
def default_runtime() -> Runtime:
    """The process's Temporal runtime for Courier's clients: core logs to Python's logging.

    (The SDK's own default runtime writes the core's warnings to stderr with ANSI colours.)
    """
    return Runtime(telemetry=_telemetry())


async def connect(
    config: TemporalConfig,
    *,
    wait: bool = False,
    runtime: Runtime | None = None,
    tracing: TracingConfig | None = None,
) -> Client:
    """A client for the configured address and namespace.

    Each attempt takes at most :data:`CONNECT_TIMEOUT_S`. With ``wait``, a failure is logged in
    one line and retried with backoff (for long-running services; cancel the call to give up);
    without it, the first failure raises :class:`TemporalUnreachable`. The client encrypts
    payloads when ``temporal.encryption`` is set (a key that cannot be read raises
    :class:`courier.core.encryption.EncryptionKeyError` at once).

    With ``tracing`` enabled, the process's tracing is started (``courier.core.tracing``) and
    the client and every worker made from it trace workflows and activities.
    """
    converter = data_converter(config.encryption)  # EncryptionKeyError: not worth retrying
    running = traces.start(tracing) if tracing is not None else None
    plugins = [running.temporal_plugin()] if running is not None else []
    delay = 1.0
    while True:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                return await Client.connect(
                    config.address,
                    namespace=config.namespace,
                    data_converter=converter,
                    tls=_tls(config),
                    api_key=config.api_key.get_secret_value() if config.api_key else None,
                    runtime=runtime or default_runtime(),
                    connect_timeout=timedelta(seconds=CONNECT_TIMEOUT_S),
                    plugins=plugins,
                )
        except (RuntimeError, RPCError, TimeoutError) as err:
            reason = describe_failure(config.address, err, tls=config.tls is not None)
            if not wait:
                raise TemporalUnreachable(reason) from err
            log.warning("%s; retrying in %.0fs", reason, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF_S)
