"""The ``temporal.encryption`` section: AES-256-GCM keys for Temporal payloads.

With it, every payload Courier sends to Temporal (workflow and activity inputs and results,
memos, summaries, failure messages) is encrypted before it leaves the process; the server, its
database and the UI see ciphertext. Keys have IDs: new payloads use ``current_key``, and any
listed key still decrypts what it encrypted, so a key rotates by adding a new one, making it
current, and dropping the old one once no retained history needs it. Key material comes from
the environment (``key: ${NAME}``) or from a file (``file:``), never from the file itself.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

KEY_BYTES = 32
"""AES-256: 32 bytes of key material."""


class EncryptionKeyError(Exception):
    """A configured key cannot be used; the message names it and what to fix."""


class EncryptionKey(BaseModel):
    """One key: an ID (written into every payload it encrypts) and its material."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Key ID, stored in the metadata of each payload encrypted with it; never "
        "reuse an ID for other material.",
    )
    key: SecretStr | None = Field(
        default=None,
        description="The key, base64 of 32 random bytes (e.g. `openssl rand -base64 32`); "
        "give it as ${ENV}, never literally.",
    )
    file: Path | None = Field(
        default=None,
        description="A file holding the key (base64 text or 32 raw bytes), e.g. a mounted "
        "Secret; instead of `key`.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> EncryptionKey:
        if (self.key is None) == (self.file is None):
            raise ValueError(f"key {self.id!r}: give exactly one of `key` or `file`")
        return self

    def material(self) -> bytes:
        """The 32 key bytes; :class:`EncryptionKeyError` says what is wrong."""
        if self.file is not None:
            try:
                raw = self.file.read_bytes()
            except OSError as err:
                raise EncryptionKeyError(
                    f"temporal.encryption key {self.id!r}: cannot read {self.file}: "
                    f"{err.strerror or err}"
                ) from None
            if len(raw) == KEY_BYTES:
                return raw
            text = raw.decode("ascii", errors="replace").strip()
        else:
            assert self.key is not None
            text = self.key.get_secret_value().strip()
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            value = b""
        if len(value) != KEY_BYTES:
            raise EncryptionKeyError(
                f"temporal.encryption key {self.id!r} is not base64 of {KEY_BYTES} bytes; make "
                "one with `openssl rand -base64 32`"
            )
        return value


class EncryptionConfig(BaseModel):
    """Encryption of Temporal payloads (AES-256-GCM, rotating keys)."""

    model_config = ConfigDict(extra="forbid")

    current_key: str = Field(description="ID of the key new payloads are encrypted with.")
    keys: list[EncryptionKey] = Field(
        min_length=1,
        description="Every key that may be needed to decrypt: the current one and older ones "
        "still used by retained histories (keep a key for the namespace retention after it "
        "stops being current). Same list for ingest, workers, CLI and codec server.",
    )

    @model_validator(mode="after")
    def _current_is_listed(self) -> EncryptionConfig:
        ids = [k.id for k in self.keys]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"key IDs must be unique; repeated: {', '.join(repeated)}")
        if self.current_key not in ids:
            raise ValueError(
                f"current_key {self.current_key!r} is not among the keys ({', '.join(ids)})"
            )
        return self

    def materials(self) -> dict[str, bytes]:
        """Key ID → key bytes, for every key; :class:`EncryptionKeyError` on the first bad one."""
        return {key.id: key.material() for key in self.keys}
