"""How ingest talks to Kafka: consumer options from the config, and no topic auto-creation.

aiokafka 0.14 has no ``allow_auto_create_topics`` option: its metadata requests always ask the
broker to create a missing topic (when the broker allows it). A consumer must never create the
topics it reads — a deleted topic would come back empty under the consumer, and an operator's
own create would then fail. :func:`never_create_topics` makes every aiokafka client started in
the calling task (and the tasks it starts, which is where aiokafka refreshes metadata) send
``allow_auto_topic_creation=false``; clients elsewhere in the process keep aiokafka's default.
"""

from __future__ import annotations

import ssl
from contextvars import ContextVar

import aiokafka.client
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from courier.config import KafkaConfig

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
    if sec.protocol in ("SSL", "SASL_SSL"):
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None,
            certfile=str(sec.ssl_certfile) if sec.ssl_certfile else None,
            keyfile=str(sec.ssl_keyfile) if sec.ssl_keyfile else None,
        )
        options["ssl_context"] = context
    if sec.protocol.startswith("SASL"):
        options["sasl_mechanism"] = sec.sasl_mechanism
        options["sasl_plain_username"] = sec.sasl_username
        options["sasl_plain_password"] = (
            sec.sasl_password.get_secret_value() if sec.sasl_password else None
        )
    return options
