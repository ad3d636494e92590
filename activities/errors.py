"""Errors a destination raises; ``activities.export`` maps them to Temporal retry decisions.

::

    ExportError                  root of every export error
    ├── PermanentExportError     retrying cannot help (4xx outside the retry set, bad payload)
    └── RetryableExportError     try again later (5xx, 429, timeouts, refused connections)

Any other exception escaping a destination is treated as retryable.
"""

from __future__ import annotations

from typing import Literal

Cause = Literal["throttled", "unavailable", "other"]
"""Why a retryable export failed, for the destination's rate control:

- ``throttled``: the destination asked to slow down (HTTP 429): its rate is lowered (AIMD);
- ``unavailable``: it could not be reached or did not answer in time, or answered 5xx: enough
  of these in a row open its circuit;
- ``other``: anything else retryable; counts for neither.
"""


class ExportError(Exception):
    """Root of the errors a destination raises.

    A destination that writes a batch record by record may say, for a batch that partly
    failed, which records it wrote (``written``: their idempotency keys), so that only the
    others are ever sent again.
    """

    def __init__(self, reason: str, *, written: frozenset[str] = frozenset()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.written = written


class PermanentExportError(ExportError):
    """The destination refused the record for good; the workflow fails without retrying.

    Of a batch, it may also say which records it refused for good (``refused``: idempotency
    key → reason); without that the batch is split until the records that fail are found.
    """

    def __init__(
        self,
        reason: str,
        *,
        written: frozenset[str] = frozenset(),
        refused: dict[str, str] | None = None,
    ) -> None:
        super().__init__(reason, written=written)
        self.refused = refused or {}


class RetryableExportError(ExportError):
    """A transient failure; ``retry_after`` (seconds) overrides the next backoff when set."""

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        cause: Cause = "other",
        written: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(reason, written=written)
        self.retry_after = retry_after
        self.cause: Cause = cause
