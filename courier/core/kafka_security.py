"""How Courier authenticates to a Kafka cluster (TLS and SASL), and the aiokafka options it gives.

One config section, used wherever Courier talks to Kafka: ingest (``kafka.security``), another
cluster for the dead-letter topics (``dead_letter.kafka.security``) and a ``kafka`` destination
(``destinations[].security``). It sits among the leaf modules so that a destination kind, which
may not import the config file's model, can use it too.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class KafkaSecurity(BaseModel):
    """How Courier authenticates to Kafka (TLS and SASL); plaintext by default."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism; required with a SASL protocol."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password; use ${ENV} rather than writing it here."
    )
    ssl_cafile: Path | None = Field(default=None, description="CA bundle to verify brokers.")
    ssl_certfile: Path | None = Field(default=None, description="Client certificate (mTLS).")
    ssl_keyfile: Path | None = Field(default=None, description="Client private key (mTLS).")

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSecurity:
        if self.protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"protocol {self.protocol} needs sasl_mechanism, sasl_username and sasl_password"
            )
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of an SSL or SASL_SSL protocol; None for plaintext."""
        if self.protocol not in ("SSL", "SASL_SSL"):
            return None
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
            certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
            keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
        )
        return context

    def client_options(self) -> dict[str, object]:
        """aiokafka client options (producer, consumer or admin) for this security setting."""
        options: dict[str, object] = {"security_protocol": self.protocol}
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return options
