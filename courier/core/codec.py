"""AES-256-GCM payload codec: what Temporal stores of Courier's payloads is ciphertext.

An encrypted payload has metadata ``encoding: binary/encrypted`` and ``encryption-key-id``, and
data ``nonce (12 bytes) || ciphertext || tag``: the whole original payload (its metadata and
data) serialised and sealed with the key, the key ID bound in as associated data. Payloads
without that encoding pass through decode unchanged, so histories written before encryption
was turned on still read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from courier.core.encryption import EncryptionConfig

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class DecryptError(Exception):
    """A payload cannot be decrypted with the configured keys; the message says which key."""


class AesGcmCodec(PayloadCodec):
    """Encrypts with the current key; decrypts with whichever key a payload names."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        self._aead = {key_id: AESGCM(material) for key_id, material in keys.items()}
        self.current = current
        self._current = self._aead[current]

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Each payload sealed whole with the current key."""
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Each encrypted payload opened; others returned as they are."""
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        """One payload sealed with the current key."""
        nonce = os.urandom(NONCE_BYTES)
        key_id = self.current.encode()
        sealed = self._current.encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(metadata={"encoding": ENCODING, KEY_ID: key_id}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        """One payload opened with the key it names (unencrypted ones unchanged)."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"")
        name = key_id.decode(errors="replace")
        aead = self._aead.get(name)
        if aead is None:
            raise DecryptError(
                f"payload encrypted with key {name!r}, which is not among temporal.encryption."
                f"keys ({', '.join(sorted(self._aead))}); add it back to read this history"
            )
        try:
            plain = aead.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], key_id)
        except InvalidTag:
            raise DecryptError(
                f"payload does not decrypt with key {name!r}: the key's material differs from "
                "the one it was encrypted with, or the payload was altered"
            ) from None
        return Payload.FromString(plain)


def codec_for(config: EncryptionConfig) -> AesGcmCodec:
    """The codec of a ``temporal.encryption`` section (reads key files; may raise)."""
    return AesGcmCodec(config.materials(), config.current_key)


def data_converter(config: EncryptionConfig | None) -> DataConverter:
    """The SDK's default converter, encrypting payloads and failure messages when configured.

    Failure messages and stack traces can quote record data, so with encryption they travel in
    the failure's encoded attributes (the UI shows them through the codec server).
    """
    if config is None:
        return DataConverter.default
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=codec_for(config),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
