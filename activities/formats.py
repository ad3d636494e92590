"""Record formats: how a topic's keys and values are read (``kafka.formats``), with a registry.

A format turns a record's key or value into what the JSON envelope carries and what mappings
see, before the destination writes it (:meth:`RecordDecoder.decode_all`, called by the export
activity on the records it is about to write, inline or read back by reference):

- ``json`` (values' default): today's reading: JSON when it parses, else text (or base64);
- ``text`` (keys' default): UTF-8 text, never parsed (base64 when not UTF-8);
- ``bytes``: always base64;
- ``avro``, ``json-schema``, ``protobuf``: the schema-registry wire format (magic byte 0, a
  4-byte big-endian schema ID, the payload; for Protobuf, message indexes before the message);
  the schema is fetched from the registry by ID once per process (an LRU cache) and the payload
  decoded to JSON (Avro types: see :func:`avro_to_json`; Protobuf: proto3's JSON mapping, see
  :func:`decode_protobuf`; a ``.proto`` schema is compiled with protoc from grpcio-tools).

The decoded value replaces the blob's reading only (:class:`activities.encoding.DecodedBlob`):
its original bytes stay, so a destination that writes records as they are still writes them.

Failures: a record whose schema ID the registry does not know, or whose payload does not
decode, fails alone (:class:`PermanentExportError`); a registry that cannot be reached, answers
5xx or refuses the credentials is a transient error (:class:`RetryableExportError`): the
records wait and are decoded once it is back.

Routing rules (``when``) see decoded values too: ingest calls :meth:`RecordDecoder.prefetch` on
the records it fetched (its records wait while the registry cannot answer), then routes each
with :meth:`RecordDecoder.decode_now`, which decodes with cached schemas only and never waits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import io
import json
import math
import ssl
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from activities.encoding import DecodedBlob, parse_json_text
from activities.errors import PermanentExportError, RetryableExportError
from courier.core.durations import Duration
from workflows.types import Blob, KafkaRecord, OutgoingRecord

FormatName = Literal["json", "text", "bytes", "avro", "json-schema", "protobuf"]
"""How a key or value is read."""

REGISTRY_FORMATS: frozenset[str] = frozenset({"avro", "json-schema", "protobuf"})
"""Formats in the schema-registry wire format (they need ``kafka.schema_registry``)."""

DEFAULT_TOPIC = "*"
"""The ``kafka.formats`` entry for topics without one of their own."""

MAGIC_BYTE = 0
HEADER_BYTES = 5


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TopicFormat(_Strict):
    """How one topic's keys and values are read."""

    key: FormatName = Field(default="text", description="Format of the keys.")
    value: FormatName = Field(default="json", description="Format of the values.")


class SchemaRegistryConfig(_Strict):
    """The schema registry that `avro`, `json-schema` and `protobuf` records name by schema ID."""

    url: str = Field(
        description="Base URL of its Confluent-compatible API, e.g. `https://registry:8081` "
        "(Apicurio: `…/apis/ccompat/v7`); schemas are read from `{url}/schemas/ids/{id}`."
    )
    username: str | None = Field(default=None, description="Basic-auth user, if it needs one.")
    password: SecretStr | None = Field(
        default=None,
        description="Basic-auth password; use `${VAR}` to read it from the environment.",
    )
    ca_file: Path | None = Field(
        default=None, description="CA certificate (PEM) to verify an https registry with."
    )
    timeout: Duration = Field(
        default=datetime.timedelta(seconds=10), description="Timeout of one request."
    )
    cache_size: int = Field(
        default=1000, ge=1, description="Schemas kept per process (least recently used dropped)."
    )


def format_of(formats: dict[str, TopicFormat], topic: str) -> TopicFormat | None:
    """The format of ``topic``: its own entry, else the ``*`` entry, else None (defaults)."""
    return formats.get(topic) or formats.get(DEFAULT_TOPIC)


# ----------------------------------------------------------------------------- wire format
class UndecodableError(Exception):
    """A key or value cannot be decoded (the record fails alone)."""


class RegistryUnavailableError(Exception):
    """The registry could not answer now (the records wait)."""


def split_wire_format(data: bytes) -> tuple[int, bytes]:
    """``(schema_id, payload)`` of bytes in the schema-registry wire format."""
    if len(data) < HEADER_BYTES:
        raise UndecodableError(
            f"{len(data)} bytes: too short for the schema-registry wire format "
            "(magic byte 0 and a 4-byte schema ID)"
        )
    if data[0] != MAGIC_BYTE:
        raise UndecodableError(
            f"first byte is {data[0]}, not the wire format's magic byte 0: the record was not "
            "written by a schema-registry serializer"
        )
    return int.from_bytes(data[1:HEADER_BYTES], "big"), data[HEADER_BYTES:]


def wire_format(schema_id: int, payload: bytes) -> bytes:
    """Bytes in the schema-registry wire format (what a Confluent serializer writes)."""
    return bytes([MAGIC_BYTE]) + schema_id.to_bytes(4, "big") + payload


# ----------------------------------------------------------------------------- Avro to JSON
def avro_to_json(value: Any) -> Any:
    """A value fastavro read, as JSON: the documented mapping of Avro types.

    bytes and fixed → base64 text; decimal → its exact decimal text; timestamp-* and
    local-timestamp-* → ISO 8601 (UTC ones with ``+00:00``); date, time-* → ISO 8601; uuid →
    text; enum → its symbol; union → the plain value of the branch; map, record → object;
    NaN and infinite floats → the text ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: avro_to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [avro_to_json(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class RegisteredSchema:
    """A schema as the registry gave it: its type (``AVRO``, ``JSON``, ``PROTOBUF``) and text,
    with the parsed Avro schema for Avro."""

    schema_id: int
    schema_type: str
    text: str
    avro: Any = None
    protobuf: Any = None
    """For Protobuf: the compiled file's ``FileDescriptor``."""


class SchemaRegistryClient:
    """Reads schemas by ID from a Confluent-compatible registry, caching them (LRU)."""

    def __init__(
        self, config: SchemaRegistryConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.url = config.url.rstrip("/")
        auth = None
        if config.username is not None:
            password = config.password.get_secret_value() if config.password else ""
            auth = httpx.BasicAuth(config.username, password)
        verify: ssl.SSLContext | bool = True
        if config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_file))
        self._http = httpx.AsyncClient(
            auth=auth,
            verify=verify,
            timeout=config.timeout.total_seconds(),
            transport=transport,
            headers={"Accept": "application/vnd.schemaregistry.v1+json, application/json"},
        )
        self._cache: OrderedDict[int, RegisteredSchema] = OrderedDict()
        self._pending: dict[int, asyncio.Future[RegisteredSchema]] = {}
        self.fetches = 0
        """Requests made (for tests and the benchmark: cached schemas are not fetched again)."""

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._http.aclose()

    def cached(self, schema_id: int) -> RegisteredSchema | None:
        """The cached schema of ``schema_id`` (marked recently used), or None."""
        schema = self._cache.get(schema_id)
        if schema is not None:
            self._cache.move_to_end(schema_id)
        return schema

    async def schema(self, schema_id: int) -> RegisteredSchema:
        """The schema of ``schema_id``: cached, or fetched once however many ask at once."""
        schema = self.cached(schema_id)
        if schema is not None:
            return schema
        pending = self._pending.get(schema_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[RegisteredSchema] = asyncio.get_running_loop().create_future()
        self._pending[schema_id] = future
        try:
            schema = await self._fetch(schema_id)
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._pending[schema_id]
        future.set_result(schema)
        self._cache[schema_id] = schema
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        return schema

    async def _fetch(self, schema_id: int) -> RegisteredSchema:
        where = f"{self.url}/schemas/ids/{schema_id}"
        self.fetches += 1
        try:
            response = await self._http.get(where)
        except httpx.HTTPError as err:
            raise RegistryUnavailableError(
                f"schema registry at {self.url} unreachable ({type(err).__name__}: {err})"
            ) from err
        if response.status_code in (404, 422):
            raise UndecodableError(f"schema id {schema_id} not found in the registry at {self.url}")
        if response.status_code in (401, 403):
            raise RegistryUnavailableError(
                f"schema registry at {self.url} refused the credentials (HTTP "
                f"{response.status_code}): check kafka.schema_registry.username and password"
            )
        if response.status_code != 200:
            raise RegistryUnavailableError(
                f"schema registry at {self.url} answered HTTP {response.status_code} for "
                f"schema id {schema_id}"
            )
        try:
            body = response.json()
            text = body["schema"]
            schema_type = body.get("schemaType") or "AVRO"
        except (ValueError, KeyError, TypeError) as err:
            raise RegistryUnavailableError(
                f"schema registry at {self.url} gave no schema for id {schema_id}: {err}"
            ) from err
        avro = None
        if schema_type == "AVRO":
            import fastavro

            try:
                avro = fastavro.parse_schema(json.loads(text))
            except Exception as err:  # fastavro raises several kinds for a bad schema
                raise UndecodableError(
                    f"schema id {schema_id} in the registry at {self.url} is not a valid Avro "
                    f"schema: {err}"
                ) from err
        protobuf = None
        if schema_type == "PROTOBUF":
            if body.get("references"):
                raise UndecodableError(
                    f"schema id {schema_id} imports other registered schemas (references), "
                    "which Courier does not resolve yet"
                )
            protobuf = await asyncio.to_thread(compile_proto, text, schema_id)
        return RegisteredSchema(schema_id, schema_type, text, avro, protobuf)


# ----------------------------------------------------------------------------- decoding
def _where(record: KafkaRecord, name: str) -> str:
    return f"{name} of {record.topic}/{record.partition}/{record.offset}"


class RecordDecoder:
    """Decodes the keys and values of records by their topic's format (one per process)."""

    def __init__(
        self,
        formats: dict[str, TopicFormat],
        registry: SchemaRegistryClient | None = None,
    ) -> None:
        self.formats = formats
        self.registry = registry
        self._unknown: dict[int, None] = {}
        """Schema IDs the registry said it does not have (oldest first, as many as cached)."""

    @classmethod
    def of(
        cls, formats: dict[str, TopicFormat], registry: SchemaRegistryConfig | None
    ) -> RecordDecoder | None:
        """A decoder for this config, or None when every topic is read as today."""
        if not formats or all(f == TopicFormat() for f in formats.values()):
            return None
        client = SchemaRegistryClient(registry) if registry is not None else None
        return cls(formats, client)

    async def close(self) -> None:
        """Release the registry client."""
        if self.registry is not None:
            await self.registry.close()

    async def decode_all(self, items: Sequence[OutgoingRecord]) -> list[OutgoingRecord]:
        """``items`` with keys and values decoded by their topic's format.

        Raises :class:`PermanentExportError` naming the first record that cannot be decoded,
        and :class:`RetryableExportError` when the registry cannot answer.
        """
        return [await self.decode(item) for item in items]

    async def decode(self, item: OutgoingRecord) -> OutgoingRecord:
        """One record decoded (see :meth:`decode_all`)."""
        record = item.record
        fmt = format_of(self.formats, record.topic)
        if fmt is None:
            return item
        key = await self._field(record, "key", record.key, fmt.key)
        value = await self._field(record, "value", record.value, fmt.value)
        if key is record.key and value is record.value:
            return item
        return replace(item, record=replace(record, key=key, value=value))

    async def _field(
        self, record: KafkaRecord, name: str, blob: Blob | None, fmt: FormatName
    ) -> Blob | None:
        if blob is not None and not isinstance(blob, DecodedBlob) and fmt in REGISTRY_FORMATS:
            try:
                await self._fetch_schema(blob)
            except UndecodableError as err:
                raise PermanentExportError(f"{_where(record, name)}: {err}", reached=False) from err
            except RegistryUnavailableError as err:
                raise RetryableExportError(f"{_where(record, name)} waits: {err}") from err
        try:
            return self._field_now(record, name, blob, fmt)
        except UndecodableError as err:
            raise PermanentExportError(str(err), reached=False) from err

    async def _fetch_schema(self, blob: Blob) -> None:
        """Have the schema of a wire-format blob cached (UndecodableError: it has none)."""
        if self.registry is None:  # the config model requires one; a decoder built by hand
            raise UndecodableError("registry formats need kafka.schema_registry")
        schema_id, _ = split_wire_format(blob.to_bytes())
        await self.registry.schema(schema_id)

    async def prefetch(self, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> None:
        """Fetch the schemas that ``(topic, key, value)`` records in the wire format name and
        that are not cached, so :meth:`decode_now` can decode them; RegistryUnavailableError
        when the registry cannot answer (try again later).

        A schema the registry does not have is skipped: :meth:`decode_now` fails its records.
        """
        if self.registry is None:
            return
        wanted: set[int] = set()
        for topic, key, value in records:
            fmt = format_of(self.formats, topic)
            if fmt is None:
                continue
            for data, name in ((key, fmt.key), (value, fmt.value)):
                if data is not None and name in REGISTRY_FORMATS:
                    with contextlib.suppress(UndecodableError):
                        wanted.add(split_wire_format(data)[0])
        for schema_id in sorted(wanted):
            if self.registry.cached(schema_id) is None and schema_id not in self._unknown:
                try:
                    await self.registry.schema(schema_id)
                except UndecodableError:
                    self._unknown[schema_id] = None
                    while len(self._unknown) > self.registry.config.cache_size:
                        del self._unknown[next(iter(self._unknown))]

    def decode_now(self, record: KafkaRecord) -> KafkaRecord:
        """A record decoded with the schemas cached now (routing rules that look at the value,
        after :meth:`prefetch`); UndecodableError naming the field when it cannot be."""
        fmt = format_of(self.formats, record.topic)
        if fmt is None:
            return record
        key = self._field_now(record, "key", record.key, fmt.key)
        value = self._field_now(record, "value", record.value, fmt.value)
        if key is record.key and value is record.value:
            return record
        return replace(record, key=key, value=value)

    def _field_now(
        self, record: KafkaRecord, name: str, blob: Blob | None, fmt: FormatName
    ) -> Blob | None:
        """The field decoded with cached schemas only (registry formats: fetch them first)."""
        if blob is None or isinstance(blob, DecodedBlob):
            return blob
        if fmt == "json":
            if name == "value" or blob.base64:
                return blob  # as today: the envelope parses it
            parsed, data = parse_json_text(blob.text)
            return DecodedBlob(blob.text, data=data, encoding="json") if parsed else blob
        if fmt == "text":
            if name == "key" or blob.base64:
                return blob  # as today: text, or base64 when not UTF-8
            return DecodedBlob(blob.text, data=blob.text, encoding="text")
        if fmt == "bytes":
            if blob.base64:
                return DecodedBlob(blob.text, True, data=blob.text, encoding="base64")
            data = base64.b64encode(blob.text.encode("utf-8")).decode("ascii")
            return DecodedBlob(blob.text, data=data, encoding="base64")
        try:
            decoded = self._registry_format(blob.to_bytes(), fmt)
        except UndecodableError as err:
            raise UndecodableError(f"{_where(record, name)}: {err}") from err
        return DecodedBlob(blob.text, blob.base64, data=decoded, encoding="json")

    def _registry_format(self, data: bytes, fmt: FormatName) -> Any:
        if self.registry is None:  # the config model requires one; a decoder built by hand
            raise UndecodableError(f"format {fmt} needs kafka.schema_registry")
        schema_id, payload = split_wire_format(data)
        schema = self.registry.cached(schema_id)
        if schema is None:
            raise UndecodableError(
                f"schema id {schema_id} not found in the registry at {self.registry.url}"
            )
        if fmt == "avro":
            if schema.avro is None:
                raise UndecodableError(
                    f"schema id {schema_id} is a {schema.schema_type} schema, not Avro"
                )
            return decode_avro(payload, schema)
        if fmt == "protobuf":
            if schema.protobuf is None:
                raise UndecodableError(
                    f"schema id {schema_id} is a {schema.schema_type} schema, not Protobuf"
                )
            return decode_protobuf(payload, schema)
        if schema.schema_type != "JSON":
            raise UndecodableError(
                f"schema id {schema_id} is a {schema.schema_type} schema, not JSON Schema"
            )
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UndecodableError(f"JSON Schema payload is not UTF-8: {err}") from err
        parsed, value = parse_json_text(text)
        if not parsed:
            raise UndecodableError(f"JSON Schema payload (schema id {schema_id}) is not JSON")
        return value


def decode_avro(payload: bytes, schema: RegisteredSchema) -> Any:
    """An Avro payload (without the wire-format header) as JSON."""
    import fastavro

    stream = io.BytesIO(payload)
    try:
        value = fastavro.schemaless_reader(stream, schema.avro, None)
    except Exception as err:  # fastavro raises EOFError, ValueError, IndexError, … on bad data
        raise UndecodableError(
            f"Avro payload does not decode with schema id {schema.schema_id}: "
            f"{type(err).__name__}: {err}"
        ) from err
    if stream.tell() != len(payload):
        raise UndecodableError(
            f"Avro payload does not match schema id {schema.schema_id}: "
            f"{len(payload) - stream.tell()} bytes left over"
        )
    return avro_to_json(value)


# ----------------------------------------------------------------------------- Protobuf
def compile_proto(text: str, schema_id: int) -> Any:
    """The ``FileDescriptor`` of a ``.proto`` schema text, compiled by protoc (grpcio-tools) into
    a pool of its own (versions of one schema may reuse message names); the well-known types
    (``google/protobuf/*.proto``) may be imported."""
    import importlib.resources
    import tempfile

    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_tools import protoc

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory(prefix="courier-proto-") as tmp:
        source, out = Path(tmp) / "schema.proto", Path(tmp) / "schema.pb"
        source.write_text(text)
        status = protoc.main(
            [
                "protoc",
                f"-I{tmp}",
                f"-I{include}",
                "--include_imports",
                f"--descriptor_set_out={out}",
                str(source),
            ]
        )
        if status != 0 or not out.exists():
            raise UndecodableError(f"schema id {schema_id} is not a .proto file protoc compiles")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool.FindFileByName("schema.proto")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at ``pos`` (as the wire format writes message indexes) and the next pos."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def message_indexes(data: bytes) -> tuple[list[int], bytes]:
    """The message indexes that start a Protobuf payload in the wire format, and the message.

    A count, then that many indexes (zigzag varints); a count of 0 means ``[0]``: the first
    message of the file.
    """
    try:
        count, pos = _varint(data, 0)
        if count == 0:
            return [0], data[pos:]
        if not 0 < count <= 100:
            raise ValueError(f"{count} message indexes")
        indexes = []
        for _ in range(count):
            index, pos = _varint(data, pos)
            indexes.append(index)
    except (IndexError, ValueError) as err:
        raise UndecodableError(f"Protobuf message indexes do not decode: {err}") from err
    return indexes, data[pos:]


def decode_protobuf(payload: bytes, schema: RegisteredSchema) -> Any:
    """A Protobuf payload (after the wire-format header) as JSON: proto3's JSON mapping, with
    the field names of the schema and fields at their default values included."""
    from google.protobuf import json_format, message_factory
    from google.protobuf.message import DecodeError

    indexes, message = message_indexes(payload)
    try:
        descriptor = list(schema.protobuf.message_types_by_name.values())[indexes[0]]
        for index in indexes[1:]:
            descriptor = descriptor.nested_types[index]
    except IndexError:
        raise UndecodableError(
            f"message indexes {indexes} name no message of schema id {schema.schema_id}"
        ) from None
    value = message_factory.GetMessageClass(descriptor)()
    try:
        value.ParseFromString(message)
    except DecodeError as err:
        raise UndecodableError(
            f"Protobuf payload does not decode as {descriptor.full_name} (schema id "
            f"{schema.schema_id}): {err}"
        ) from err
    return json_format.MessageToDict(
        value, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
