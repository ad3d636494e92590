"""Connecting to Temporal from Courier's config."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.service import TLSConfig

from courier.config import TemporalConfig


def _tls(config: TemporalConfig) -> TLSConfig | bool:
    if config.tls is None:
        return False
    tls = config.tls
    return TLSConfig(
        server_root_ca_cert=tls.server_root_ca_cert.read_bytes() if tls.server_root_ca_cert else None,
        client_cert=tls.client_cert.read_bytes() if tls.client_cert else None,
        client_private_key=tls.client_private_key.read_bytes() if tls.client_private_key else None,
        domain=tls.domain,
    )


async def connect(config: TemporalConfig) -> Client:
    """A client for the configured address and namespace."""
    return await Client.connect(
        config.address,
        namespace=config.namespace,
        tls=_tls(config),
        api_key=config.api_key.get_secret_value() if config.api_key else None,
    )
