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
    """Root of the errors a destination raises."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.confirmed: frozenset[str] = frozenset()
        """Idempotency keys of the batch's records whose effect is confirmed although the
        write as a whole failed (a retry need not send them again)."""


class PermanentExportError(ExportError):
    """The record cannot be exported; the workflow fails without retrying.

    ``reached`` is False when it failed before anything was sent to the destination (a mapping
    that fails for it): that says nothing about the destination, so rate control does not
    count it as an answer.
    """

    def __init__(self, reason: str, *, reached: bool = True) -> None:
        super().__init__(reason)
        self.reached = reached


class RetryableExportError(ExportError):
    """A transient failure; ``retry_after`` (seconds) overrides the next backoff when set."""

    def __init__(
        self, reason: str, *, retry_after: float | None = None, cause: Cause = "other"
    ) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.cause: Cause = cause
