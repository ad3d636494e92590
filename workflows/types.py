"""Values that cross the Temporal boundary: workflow input, activity batch and receipts.

They are plain dataclasses so the workflow sandbox can import them and the Temporal UI shows
them readably. Bytes travel as :class:`Blob`: UTF-8 text when the bytes decode, else base64.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Blob:
    """Bytes carried readably: ``text`` is the UTF-8 text, or base64 when ``base64`` is set."""

    text: str
    base64: bool = False

    @staticmethod
    def of(data: bytes) -> Blob:
        """Wrap bytes, keeping them as text when they are valid UTF-8."""
        try:
            return Blob(text=data.decode("utf-8"))
        except UnicodeDecodeError:
            return Blob(text=base64.b64encode(data).decode("ascii"), base64=True)

    def to_bytes(self) -> bytes:
        """The original bytes."""
        if self.base64:
            try:
                return base64.b64decode(self.text, validate=True)
            except binascii.Error as err:
                raise ValueError(f"blob is marked base64 but does not decode: {err}") from err
        return self.text.encode("utf-8")


@dataclass(frozen=True)
class Header:
    """One Kafka record header."""

    name: str
    value: Blob | None


@dataclass(frozen=True)
class KafkaRecord:
    """A Kafka record as it was consumed, with its coordinates."""

    topic: str
    partition: int
    offset: int
    key: Blob | None
    value: Blob | None
    timestamp_ms: int
    headers: list[Header] = field(default_factory=list)
    topic_id: str | None = None
    """Kafka's ID of the topic (None only in workflows started before topic IDs were used)."""


@dataclass(frozen=True)
class RetrySpec:
    """A destination's activity retry policy, in seconds (``maximum_attempts=0``: unlimited)."""

    initial_interval_s: float
    backoff_coefficient: float
    maximum_interval_s: float
    maximum_attempts: int


@dataclass(frozen=True)
class DestinationPolicy:
    """Where and how a record is exported: the destination's name and policies, never secrets."""

    name: str
    task_queue: str
    retry: RetrySpec
    start_to_close_s: float
    schedule_to_close_s: float | None = None
    batch_size: int = 500
    """Batch mode: most records one export activity carries."""
    heartbeat_s: float | None = None
    """Longest an export attempt may go without a heartbeat; unset (older workflows) means
    only ``start_to_close_s`` bounds an attempt whose worker died."""


@dataclass(frozen=True)
class RangeFailure:
    """Why a record of a batch-mode range failed for good, given to its own ``ExportRecord``."""

    range_id: str
    """The workflow ID of the range the record failed in."""
    reason: str
    error_type: str
    """The failure's type, e.g. ``PermanentExportError``."""
    attempts: int = 0
    """Export attempts the failure came after (0: none, or not known)."""


@dataclass(frozen=True)
class ExportRecordInput:
    """Input of the ``ExportRecord`` workflow.

    ``destination`` is None when no route matched the key under the ``fail`` policy; the
    workflow then fails with ``unroutable_reason``.
    """

    record: KafkaRecord
    destination: DestinationPolicy | None
    unroutable_reason: str | None = None
    hand_off_failure: str | None = None
    """Set when ingest could not hand the record itself off (unencodable, refused, a bug):
    the input carries the coordinates only and the workflow fails with this reason."""
    by_reference: bool = False
    """The record carries its coordinates and key only; the worker reads it from Kafka."""
    idempotency_key: str | None = None
    """The key the destination sees; unset: the workflow ID. A re-drive sets the record's own
    workflow ID here, so the re-exported record keeps its original idempotency key."""
    failed_in_range: RangeFailure | None = None
    """Set when the record failed in a batch-mode range: the workflow's first run fails at once
    with this reason; a replay (a new run) exports the record by reference, coordinates only."""


@dataclass(frozen=True)
class DeadLetterInput:
    """Input of the ``dead_letter`` activity: a record that failed for good, and why."""

    record: KafkaRecord
    by_reference: bool
    """``record`` holds the coordinates only: the record is read from Kafka."""
    destination: str | None
    """The destination it failed at; None: it had no route."""
    idempotency_key: str
    """The record's identity at the destinations (its workflow ID unless a re-drive gave
    another); dead-letter consumers deduplicate on it."""
    error_type: str
    """e.g. ``PermanentExportError``, ``Unroutable``, ``HandOffFailed``."""
    reason: str
    attempts: int | None = None
    """Export attempts before the failure; None: read from the workflow's history."""
    range_id: str | None = None
    """The batch-mode range the record failed in, if it did."""


@dataclass(frozen=True)
class OutgoingRecord:
    """One record handed to a destination, with the idempotency key of its export."""

    idempotency_key: str
    record: KafkaRecord


@dataclass(frozen=True)
class ExportBatch:
    """Input of the ``export`` activity: records for one destination (often just one)."""

    destination: str
    records: list[OutgoingRecord]
    by_reference: bool = False
    """The records carry coordinates and keys only: read them from Kafka before writing."""
    with_keys: bool = True
    """By reference: the references carry the records' keys, checked against what Kafka holds
    (a record that failed in a range carries its coordinates only)."""


@dataclass(frozen=True)
class ExportResult:
    """What the destination reported for a batch, e.g. ``HTTP 201`` or ``1 row inserted``."""

    destination: str
    written: int
    detail: str
    attempt: int = 1


@dataclass(frozen=True)
class ExportReceipt:
    """Result of the ``ExportRecord`` workflow."""

    workflow_id: str
    destination: str
    attempts: int
    detail: str


@dataclass(frozen=True)
class FailedRecord:
    """A record of a range that could not be exported, and why."""

    offset: int
    destination: str | None
    reason: str
    error_type: str | None = None
    """The failure's type; None: ``PermanentExportError`` (or ``Unroutable`` without a
    destination)."""
    attempts: int = 0
    """Export attempts the failure came after (0: none, or not known)."""


@dataclass(frozen=True)
class RangeSlice:
    """The records of a range that go to one destination."""

    destination: DestinationPolicy
    offsets: list[int]


@dataclass(frozen=True)
class ExportRangeInput:
    """Input of the ``ExportRange`` workflow: a contiguous offset range of one partition.

    Records travel by reference (Kafka holds them); every record keeps its own identity and
    idempotency key, the same as in per-record mode.
    """

    group: str
    """The group in the records' identities: each record's idempotency key is its
    ``workflow_id`` under this group (a re-drive keeps the consumer group, or gives its own)."""
    topic: str
    topic_id: str
    partition: int
    first_offset: int
    last_offset: int
    slices: list[RangeSlice]
    failed: list[FailedRecord] = field(default_factory=list)
    """Records that failed at ingest already (no route under ``unmatched: fail``)."""
    continued: RangeContinued | None = None
    """Set on a run that continued as new only to start failed records' workflows."""


@dataclass(frozen=True)
class RangeContinued:
    """What a range's earlier runs did, carried to a run that starts more failed records'
    workflows (a run starts a bounded number, so its history stays small)."""

    exported: int
    to_start: list[FailedRecord]
    """Failed records whose workflows are still to be started."""


@dataclass(frozen=True)
class RangeBatch:
    """Input of the ``export_range`` activity: some records of a range for one destination."""

    destination: str
    group: str
    topic: str
    topic_id: str
    partition: int
    offsets: list[int]


@dataclass(frozen=True)
class RangeBatchResult:
    """What one ``export_range`` activity wrote, and the records that failed for good."""

    destination: str
    written: int
    failed: list[FailedRecord]
    detail: str
    attempt: int = 1


@dataclass(frozen=True)
class ExportRangeResult:
    """Result of the ``ExportRange`` workflow."""

    exported: int
    failed: list[FailedRecord]


@dataclass(frozen=True)
class WorkerReport:
    """One worker process's state of one destination, signalled to ``DestinationState``."""

    worker: str
    """The worker's identity, e.g. ``12345@host``."""
    connected: bool
    """Whether the destination is open and its queue polled by this worker."""
    reason: str = ""
    """Why it is not connected (the last open error), empty when connected."""
    since: float = 0.0
    """Unix time this state began."""
    reported_at: float = 0.0
    """Unix time of this report; workers report again every ``REPORT_INTERVAL_S``."""
    stopped: bool = False
    """The worker shut down: forget it."""


@dataclass(frozen=True)
class OrderedRecord:
    """One record of a key queued in its ``ExportKey`` workflow (per-key ordering).

    ``idempotency_key`` is the record's own identity (``courier.core.ids.workflow_id``), the same
    key it has at the sink in unordered mode, so a record exported again has no new effect.
    """

    idempotency_key: str
    export: ExportRecordInput


@dataclass(frozen=True)
class BlockedRecord:
    """The record a key waits on: it failed for good and waits to be replayed or skipped."""

    idempotency_key: str
    topic: str
    partition: int
    offset: int
    reason: str
    since: float
    """Unix time it failed."""


@dataclass(frozen=True)
class ExportKeyInput:
    """Input of the ``ExportKey`` workflow: one key of one destination, exported in order.

    A new workflow gets the destination and key only; a run that continues as new carries its
    queue, the last offset taken from each source partition and a record it is blocked on.
    """

    destination: str
    key: str
    """The key as text, for people (undecodable bytes escaped)."""
    pending: list[OrderedRecord] = field(default_factory=list)
    last_offsets: dict[str, int] = field(default_factory=dict)
    """``<topic ID>/<partition>`` → last offset queued: a record at or below it is a repeat."""
    blocked: BlockedRecord | None = None
    exported: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class KeyState:
    """What an ``ExportKey`` workflow reports to ``courier status``, ``replay`` and ``skip``."""

    destination: str
    key: str
    pending: int
    """Records queued, the blocked one included."""
    exported: int
    skipped: int
    repeats: int
    """Records received again (ingest read them again) and dropped, in this run."""
    blocked: BlockedRecord | None = None


@dataclass(frozen=True)
class ExportKeyResult:
    """Result of an ``ExportKey`` run that ended because its key went idle."""

    exported: int
    skipped: int
