"""What a fault scenario produced, what each sink received, and the count that compares them.

Every produced record carries a header ``fault-id`` (``<scenario>-<n>``) that names it
independently of Kafka coordinates and of Courier's idempotency keys, so a record that reaches
a sink twice under two different keys (e.g. read again under another topic ID) is still seen
as one record delivered twice.

Definitions (docs/reliability.md repeats them):

- **produced**: records Kafka acknowledged (``acks=all``).
- **effect**: a delivery the sink took as new — REST: a request the receiver answered 2xx and
  did not flag as a repeat (the receiver flags a request whose ``Idempotency-Key`` already had
  an effect, answers it 200 and records no new effect); file: a line; PostgreSQL: a row.
- **exported**: produced records with at least one effect whose key, value and headers equal
  what was produced (byte for byte; JSON values as JSON). A record delivered altered counts as
  *corrupted*, not exported.
- **lost** = produced − exported.
- **duplicate effects**: effects beyond the first per record (whatever their idempotency key),
  plus effects of records this scenario never produced.
- **repeated deliveries** (REST only; a file or table absorbs repeats silently): requests the
  receiver flagged as repeats. Reported, never a failure: they are what idempotency is for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from courier_devtools.receiver import Receiver

FAULT_ID = "fault-id"

Headers = tuple[tuple[str, bytes], ...]
Record = tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, Headers]
"""A record to produce: ``(key, value)`` or ``(key, value, headers)``."""


@contextlib.asynccontextmanager
async def _producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@dataclass(frozen=True)
class Sent:
    """One produced record, as Kafka acknowledged it."""

    fid: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    """All headers, ``fault-id`` first."""
    partition: int
    offset: int
    acked: float = 0.0
    """``time.monotonic()`` when Kafka acknowledged it."""


class Ledger:
    """The records one scenario produced, by fault id."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.sent: dict[str, Sent] = {}

    def __len__(self) -> int:
        return len(self.sent)

    async def produce(
        self,
        bootstrap: str,
        topic: str,
        records: Iterable[Record],
        *,
        per_second: float | None = None,
        group: str = "",
    ) -> list[Sent]:
        """Produce records (``(key, value)`` or ``(key, value, headers)``), each with its id.

        ``per_second`` paces them (in tenths of a second) instead of sending all at once.
        ``group`` goes into the ids, to tell parts of a scenario apart.
        """
        todo = list(records)
        chunk = max(1, round(per_second / 10)) if per_second else len(todo) or 1
        sent: list[Sent] = []
        async with _producer(bootstrap) as producer:
            for start in range(0, len(todo), chunk):
                began = time.monotonic()
                sent += await self._send(producer, topic, todo[start : start + chunk], group)
                if per_second:
                    await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - began)))
        return sent

    async def produce_until(
        self,
        bootstrap: str,
        topic: str,
        stop: asyncio.Event,
        *,
        per_second: float,
        limit: int = 1_000,
    ) -> None:
        """Produce ordinary records at ``per_second`` until ``stop`` is set (at most ``limit``)."""
        chunk = max(1, round(per_second / 10))
        n = 0
        async with _producer(bootstrap) as producer:
            while not stop.is_set() and n < limit:
                began = time.monotonic()
                records: list[Record] = [
                    (f"k{i}".encode(), json.dumps({"n": i}).encode()) for i in range(n, n + chunk)
                ]
                await self._send(producer, topic, records, "")
                n += chunk
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - began)))

    async def _send(
        self, producer: AIOKafkaProducer, topic: str, records: list[Record], group: str
    ) -> list[Sent]:
        prefix = f"{self.scenario}-{group}" if group else self.scenario
        futures: list[tuple[str, bytes | None, bytes | None, Headers, Any]] = []
        for record in records:
            key, value = record[0], record[1]
            extra: Headers = record[2] if len(record) == 3 else ()
            fid = f"{prefix}-{len(self.sent) + len(futures)}"
            headers: Headers = ((FAULT_ID, fid.encode()), *extra)
            future = await producer.send(topic, key=key, value=value, headers=list(headers))
            futures.append((fid, key, value, headers, future))
        sent = []
        for fid, key, value, headers, future in futures:
            meta = await future
            item = Sent(fid, key, value, headers, meta.partition, meta.offset, time.monotonic())
            self.sent[fid] = item
            sent.append(item)
        return sent

    def ids(self, group: str | None = None) -> set[str]:
        """Fault ids of all records, or of one ``group`` of :meth:`produce`."""
        if group is None:
            return set(self.sent)
        prefix = f"{self.scenario}-{group}-"
        return {fid for fid in self.sent if fid.startswith(prefix)}


# ------------------------------------------------------------------------------------- sinks
@dataclass(frozen=True)
class _Json:
    """A value a sink keeps as parsed JSON: equal to bytes that parse to the same JSON."""

    data: Any


Field = bytes | _Json | None
"""A key, value, header name or header value as a sink holds it."""


@dataclass(frozen=True)
class Delivery:
    """One delivery of a record at a sink."""

    fid: str | None
    effect: bool
    repeated: bool
    intact: bool
    idempotency_key: str | None = None
    arrived: float = 0.0
    """``time.monotonic()`` of its arrival (REST only)."""
    answered: float = 0.0
    """``time.monotonic()`` of the answer (REST only)."""
    sender: str | None = None
    """The request's ``X-Courier-Sender`` header, set per worker config by tests that need to
    know which process sent it (REST only)."""


@dataclass(frozen=True)
class Tally:
    """A scenario's count: see the module docstring for the definitions."""

    produced: int
    exported: int
    lost: int
    duplicate_effects: int
    repeated_deliveries: int | None
    missing: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: int = 0

    def problems(self) -> str:
        """What is wrong, for assertion messages (empty if nothing)."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} lost, e.g. {sorted(self.missing)[:5]}")
        if self.corrupted:
            parts.append(f"{len(self.corrupted)} altered, e.g. {sorted(self.corrupted)[:5]}")
        if self.duplicated:
            parts.append(
                f"{len(self.duplicated)} had 2+ effects, e.g. {sorted(self.duplicated)[:5]}"
            )
        if self.unexpected:
            parts.append(f"{self.unexpected} effects of records never produced")
        return "; ".join(parts)


def count(
    ledger: Ledger,
    deliveries: Sequence[Delivery],
    *,
    repeats_observable: bool,
    fids: set[str] | None = None,
) -> Tally:
    """Compare deliveries with what was produced (all of it, or the records ``fids``)."""
    wanted = set(ledger.sent) if fids is None else fids
    effects = [d for d in deliveries if d.effect]
    per_record = Counter(d.fid for d in effects if d.fid in wanted)
    intact = {d.fid for d in effects if d.intact and d.fid in wanted}
    unexpected = sum(1 for d in effects if d.fid not in ledger.sent)
    duplicated = sorted(f for f, n in per_record.items() if f is not None and n > 1)
    exported = len(intact)
    return Tally(
        produced=len(wanted),
        exported=exported,
        lost=len(wanted) - exported,
        duplicate_effects=sum(n - 1 for n in per_record.values()) + unexpected,
        repeated_deliveries=(
            sum(1 for d in deliveries if d.repeated and d.fid in wanted)
            if repeats_observable
            else None
        ),
        missing=sorted(wanted - set(per_record)),
        corrupted=sorted(f for f in set(per_record) - intact if f is not None),
        duplicated=duplicated,
        unexpected=unexpected,
    )


def _blob(entry: dict[str, Any], name: str) -> Field:
    """The bytes of an envelope field (``None`` for null); a JSON value stays parsed."""
    value = entry.get(name)
    encoding = entry.get(f"{name}_encoding")
    if value is None:
        return None
    if encoding == "base64":
        return base64.b64decode(value)
    if encoding == "json":
        return _Json(value)
    return str(value).encode("utf-8")


def _same(delivered: Field, produced: bytes | None) -> bool:
    if isinstance(delivered, _Json):
        if produced is None:
            return False
        try:
            return bool(json.loads(produced) == delivered.data)
        except ValueError:
            return False
    return bool(delivered == produced)


def _headers(entries: list[dict[str, Any]]) -> list[tuple[Field, Field]]:
    return [
        (
            _blob({"n": e.get("name"), "n_encoding": e.get("name_encoding")}, "n"),
            _blob(e, "value"),
        )
        for e in entries
    ]


def _fid(headers: list[tuple[Field, Field]]) -> str | None:
    for name, value in headers:
        if name == FAULT_ID.encode() and isinstance(value, bytes):
            return value.decode()
    return None


def _matches(
    ledger: Ledger, fid: str | None, key: Any, value: Any, headers: list[tuple[Any, Any]]
) -> bool:
    sent = ledger.sent.get(fid) if fid is not None else None
    if sent is None:
        return False
    return (
        _same(key, sent.key)
        and _same(value, sent.value)
        and len(headers) == len(sent.headers)
        and all(
            _same(name, n.encode()) and _same(v, sv)
            for (name, v), (n, sv) in zip(headers, sent.headers, strict=True)
        )
    )


def envelope_delivery(ledger: Ledger, envelope: dict[str, Any]) -> tuple[str | None, bool]:
    """The fault id of a record envelope and whether it equals the produced record."""
    headers = _headers(envelope.get("headers") or [])
    fid = _fid(headers)
    intact = _matches(ledger, fid, _blob(envelope, "key"), _blob(envelope, "value"), headers)
    return fid, intact


SENDER_HEADER = "X-Courier-Sender"


class FaultReceiver(Receiver):
    """The test receiver, also noting when each request arrived and when it was answered.

    ``open`` holds the requests being answered right now (e.g. delayed by a script), by
    idempotency key: the exports in flight, as the receiver sees them.
    """

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.answered_at: list[float] = []
        """Parallel to ``requests``: when each was answered (``time.monotonic()``)."""
        self.open: dict[int, tuple[str | None, float]] = {}
        self._next = 0

    async def _handle(self, request: Request) -> Response:
        token, self._next = self._next, self._next + 1
        self.open[token] = (request.headers.get("idempotency-key"), time.monotonic())
        try:
            response = await super()._handle(request)
        except ClientDisconnect:  # the sender died mid-request: no effect, nobody to answer
            return Response(status_code=499)
        finally:
            del self.open[token]
        # The base class appended the request without awaiting since: it is the last one.
        self.answered_at.append(time.monotonic())
        return response

    def in_flight(self) -> set[str]:
        """Idempotency keys of the requests being answered right now."""
        return {key for key, _ in self.open.values() if key is not None}


class RestSink:
    """The requests a :class:`FaultReceiver` got under a path prefix, as deliveries."""

    repeats_observable = True

    def __init__(self, receiver: FaultReceiver, prefix: str, ledger: Ledger) -> None:
        self.receiver = receiver
        self.prefix = prefix
        self.ledger = ledger
        self._parsed: list[Delivery | None] = []

    async def deliveries(self) -> list[Delivery]:
        requests = self.receiver.requests
        for i in range(len(self._parsed), len(requests)):
            r = requests[i]
            if not r.path.startswith(self.prefix):
                self._parsed.append(None)
                continue
            ok = 200 <= r.status < 300
            fid, intact = (None, False)
            if ok:
                fid, intact = envelope_delivery(self.ledger, json.loads(r.body))
            self._parsed.append(
                Delivery(
                    fid=fid,
                    effect=ok and not r.duplicate,
                    repeated=r.duplicate,
                    intact=intact,
                    idempotency_key=r.idempotency_key,
                    arrived=r.time,
                    answered=self.receiver.answered_at[i],
                    sender=r.headers.get(SENDER_HEADER.lower()),
                )
            )
        return [d for d in self._parsed if d is not None]


class FileSink:
    """The lines of a file destination, as deliveries."""

    repeats_observable = False

    def __init__(self, path: Path, ledger: Ledger) -> None:
        self.path = path
        self.ledger = ledger

    async def deliveries(self) -> list[Delivery]:
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text().splitlines():
            envelope = json.loads(line)
            fid, intact = envelope_delivery(self.ledger, envelope)
            found.append(Delivery(fid, True, False, intact, envelope.get("idempotency_key")))
        return found


class PostgresSink:
    """The rows of a PostgreSQL destination's table, as deliveries.

    Reads the key from ``key_bytes`` (raw) when the table has that column and it is set, else
    from ``key`` (UTF-8); the value from ``value_bytes``, ``value_text`` or, failing both, the
    ``value`` jsonb; headers from the jsonb list (envelope entries, ``name_encoding`` too).
    """

    repeats_observable = False

    def __init__(self, pool: asyncpg.Pool, table: str, ledger: Ledger) -> None:
        self.pool = pool
        self.table = table
        self.ledger = ledger

    async def deliveries(self) -> list[Delivery]:
        exists = await self.pool.fetchval("SELECT to_regclass($1)", f'"{self.table}"')
        if exists is None:
            return []
        found = []
        for row in await self.pool.fetch(f'SELECT * FROM "{self.table}"'):
            fields = dict(row)
            if fields.get("key_bytes") is not None:
                key: Field = bytes(fields["key_bytes"])
            else:
                key = None if fields["key"] is None else fields["key"].encode("utf-8")
            if fields.get("value_bytes") is not None:
                value: Field = bytes(fields["value_bytes"])
            elif fields.get("value_text") is not None:
                value = fields["value_text"].encode("utf-8")
            elif fields.get("value") is not None:
                value = _Json(json.loads(fields["value"]))
            else:
                value = None
            headers = _headers(json.loads(fields["headers"] or "[]"))
            fid = _fid(headers)
            intact = _matches(self.ledger, fid, key, value, headers)
            found.append(Delivery(fid, True, False, intact, fields.get("idempotency_key")))
        return found


Sink = RestSink | FileSink | PostgresSink


async def tally(sink: Sink, ledger: Ledger, fids: set[str] | None = None) -> Tally:
    """The count of ``sink`` against ``ledger``."""
    return count(
        ledger, await sink.deliveries(), repeats_observable=sink.repeats_observable, fids=fids
    )


async def all_exported(sink: Sink, ledger: Ledger, fids: set[str] | None = None) -> bool:
    """Whether every produced record (or every one of ``fids``) has an intact effect."""
    return (await tally(sink, ledger, fids)).lost == 0


def first_after(ledger: Ledger, since: float) -> dict[int, Sent]:
    """Per partition, the first record Kafka acknowledged after ``since``."""
    firsts: dict[int, Sent] = {}
    for sent in ledger.sent.values():
        if sent.acked > since and (
            sent.partition not in firsts or sent.offset < firsts[sent.partition].offset
        ):
            firsts[sent.partition] = sent
    return firsts


def first_effects(deliveries: Sequence[Delivery]) -> dict[str, Delivery]:
    """Each record's first effect, by fault id."""
    found: dict[str, Delivery] = {}
    for d in deliveries:
        if d.effect and d.fid is not None:
            found.setdefault(d.fid, d)
    return found


def exported_times(deliveries: Sequence[Delivery]) -> list[float]:
    """Answer times of the effects, sorted (REST)."""
    return sorted(d.answered for d in deliveries if d.effect)
