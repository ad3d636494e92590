"""Connecting to Temporal from Courier's config."""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, TLSConfig

from courier.config import TemporalConfig

log = logging.getLogger("courier")

MAX_BACKOFF_S = 30.0


class TemporalUnreachable(Exception):
    """The Temporal frontend could not be reached."""


def _reason(err: Exception) -> str:
    text = str(err)
    for known in ("Connection refused", "timed out", "dns error", "certificate"):
        if known.lower() in text.lower():
            return known.lower()
    return text[:200]


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


def sdk_metrics_runtime(port: int, host: str = "127.0.0.1") -> Runtime:
    """A Temporal runtime serving the SDK's Prometheus metrics (task latencies, polls, slots)."""
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(bind_address=f"{host}:{port}", durations_as_seconds=True)
        )
    )


async def connect(
    config: TemporalConfig, *, wait: bool = False, runtime: Runtime | None = None
) -> Client:
    """A client for the configured address and namespace.

    With ``wait``, an unreachable server is retried with backoff (for long-running services);
    without it, the first failure raises :class:`TemporalUnreachable`.
    """
    delay = 1.0
    while True:
        try:
            return await Client.connect(
                config.address,
                namespace=config.namespace,
                tls=_tls(config),
                api_key=config.api_key.get_secret_value() if config.api_key else None,
                runtime=runtime,
            )
        except (RuntimeError, RPCError) as err:
            if not wait:
                raise TemporalUnreachable(
                    f"cannot reach Temporal at {config.address}: {_reason(err)}"
                ) from err
            log.warning(
                "Temporal at %s is not reachable (%s); retrying in %.0fs",
                config.address,
                _reason(err),
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF_S)
