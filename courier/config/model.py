"""Courier's configuration: one YAML file validated by pydantic.

``${NAME}`` (or ``${NAME:-default}``) anywhere in a string value is replaced from the
environment before validation, so secrets stay out of the file and out of workflow history.
Every error names the field, e.g. ``destinations[1].url: ...``, and, read from a file, where it
is (``destinations[1].url (line 12, column 5): ...``).
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from activities.base import DestinationConfig
from activities.formats import (
    DEFAULT_TOPIC,
    REGISTRY_FORMATS,
    SchemaRegistryConfig,
    TopicFormat,
)
from activities.mapping import Expression
from activities.registry import (
    DISCRIMINATOR,
    KINDS,
    AnyDestinationConfig,
    RegisteredKinds,
    on_change,
)
from courier.config.kubernetes import KubernetesConfig
from courier.core.durations import Duration
from courier.core.encryption import EncryptionConfig
from courier.core.kafka_security import KafkaSecurity as KafkaSecurity  # re-exported for ingest
from courier.core.tracing import TracingConfig

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The config file cannot be used; the message lists each problem as ``field: reason``."""

    def __init__(self, message: str, *, environment: bool = False) -> None:
        super().__init__(message)
        self.environment = environment
        """Every problem is in the environment (an unset variable), not in the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaConfig(_Strict):
    """Where ingest reads records from."""

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Comma-separated host:port list of brokers."
    )
    topics: list[str] = Field(default_factory=list, description="Topics to consume.")
    topic_pattern: str | None = Field(
        default=None, description="Regex of topics to consume, instead of `topics`."
    )
    group: str = Field(
        default="courier",
        min_length=1,
        description="Consumer group; part of every workflow ID, so keep it stable.",
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest", description="Where a group with no committed offset starts."
    )
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        default="read_committed",
        description="`read_committed` never exports records of aborted transactions; "
        "`read_uncommitted` also reads records of open and aborted transactions.",
    )
    max_poll_interval: Duration = Field(
        default=timedelta(minutes=5),
        description="Longest the consumer may go without polling before it leaves the group "
        "(max.poll.interval.ms). Ingest keeps polling while Temporal is down, pausing full "
        "partitions, so an outage does not trigger a rebalance.",
    )
    metadata_refresh: Duration = Field(
        default=timedelta(seconds=30),
        description="How often the consumer refreshes topic metadata (metadata.max.age.ms): "
        "how soon a new partition, a topic matching `topic_pattern`, or a topic created "
        "again after a delete is seen.",
    )
    max_in_flight: int = Field(
        default=256, ge=1, description="Workflow starts ingest keeps in flight at once."
    )
    commit_interval: Duration = Field(
        default=timedelta(seconds=1), description="How often safe offsets are committed."
    )
    security: KafkaSecurity = Field(
        default_factory=KafkaSecurity, description="TLS and SASL settings (section kafka.security)."
    )
    formats: dict[str, TopicFormat] = Field(
        default_factory=dict,
        description="How each topic's keys and values are read, by topic name (`*`: every "
        "other topic): `json`, `text`, `bytes`, or `avro` / `json-schema` / `protobuf` in the "
        "schema-registry wire format. Unset: keys `text`, values `json`.",
    )
    schema_registry: SchemaRegistryConfig | None = Field(
        default=None,
        description="The registry `avro`, `json-schema` and `protobuf` records are decoded with "
        "(section kafka.schema_registry).",
    )

    @model_validator(mode="after")
    def _one_subscription(self) -> KafkaConfig:
        if bool(self.topics) == bool(self.topic_pattern):
            raise ValueError("give exactly one of `topics` or `topic_pattern`")
        if self.topic_pattern:
            try:
                re.compile(self.topic_pattern)
            except re.error as err:
                raise ValueError(f"topic_pattern is not a valid regex: {err}") from err
        return self

    @model_validator(mode="after")
    def _registry_for_formats(self) -> KafkaConfig:
        if self.schema_registry is not None:
            return self
        for topic, fmt in self.formats.items():
            for field in ("key", "value"):
                if getattr(fmt, field) in REGISTRY_FORMATS:
                    raise ValueError(
                        f"formats.{topic}.{field}: {getattr(fmt, field)} is decoded with schemas "
                        "from a registry: set kafka.schema_registry.url"
                    )
        return self

    @model_validator(mode="after")
    def _formats_name_topics(self) -> KafkaConfig:
        pattern = re.compile(self.topic_pattern) if self.topic_pattern else None
        for topic in self.formats:
            if topic == DEFAULT_TOPIC or topic in self.topics:
                continue
            if pattern is not None and pattern.match(topic):
                continue
            raise ValueError(
                f"formats.{topic}: not a topic this config consumes; name one of kafka.topics "
                f"(or one topic_pattern matches), or `{DEFAULT_TOPIC}` for every topic"
            )
        return self


class TemporalTLS(_Strict):
    """TLS to the Temporal frontend (e.g. Temporal Cloud with mTLS)."""

    server_root_ca_cert: Path | None = Field(default=None, description="CA to verify the server.")
    client_cert: Path | None = Field(default=None, description="Client certificate (mTLS).")
    client_private_key: Path | None = Field(default=None, description="Client key (mTLS).")
    domain: str | None = Field(default=None, description="Server name to verify, if not the host.")


class TemporalConfig(_Strict):
    """Which Temporal service runs Courier's workflows."""

    address: str = Field(default="127.0.0.1:7233", description="Temporal frontend host:port.")
    namespace: str = Field(default="default", description="Temporal namespace.")
    tls: TemporalTLS | None = Field(default=None, description="TLS settings; unset is plaintext.")
    api_key: SecretStr | None = Field(default=None, description="API key, e.g. for Temporal Cloud.")
    workflow_task_queue: str = Field(
        default="courier-workflows", description="Task queue of the ExportRecord workflows."
    )

    @property
    def control_task_queue(self) -> str:
        """Task queue of the DestinationState workflows (workers' state, rate control).

        Kept apart from the export workflows' queue, so a backlog of exports never delays the
        decisions that are meant to relieve it.
        """
        return f"{self.workflow_task_queue}-control"

    ui_url: str | None = Field(
        default=None,
        description="Base URL of the Temporal Web UI, for the links `courier show` prints "
        "(unset: http://<address's host>:8233, the dev server's UI).",
    )
    max_input_bytes: int = Field(
        default=2_000_000,
        ge=1_000,
        le=2 * 1024 * 1024,
        description="Largest workflow input (as encoded, JSON with base64 for binary) ingest "
        "starts; a record over it gets a workflow that fails with the reason. Temporal "
        "refuses payloads over 2 MiB; the default leaves room for the rest of the request.",
    )
    encryption: EncryptionConfig | None = Field(
        default=None,
        description="Encrypt every payload sent to Temporal with AES-256-GCM (section "
        "temporal.encryption); unset: payloads are plain. The Temporal UI then needs "
        "`courier codec-server` to show records.",
    )


class RouteRule(_Strict):
    """One routing rule: give exactly one of ``exact``, ``prefix``, ``regex`` or ``when``."""

    exact: str | None = Field(default=None, description="Matches a key equal to this.")
    prefix: str | None = Field(default=None, description="Matches a key starting with this.")
    regex: str | None = Field(default=None, description="Matches a key this regex fully matches.")
    when: str | None = Field(
        default=None,
        description="Matches a record for which this JSONata expression (a mapping, see the "
        'README) is true, e.g. headers.region = "eu" or value.total > 1000; it sees the whole '
        "record (key, value, headers, topic, ...). A record it fails for is not exported: its "
        "workflow fails with the reason.",
    )
    destination: str = Field(description="Name of the destination the key goes to.")

    @model_validator(mode="after")
    def _one_matcher(self) -> RouteRule:
        given = [m for m in (self.exact, self.prefix, self.regex, self.when) if m is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `exact`, `prefix`, `regex` or `when`")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise ValueError(f"regex {self.regex!r} is invalid: {err}") from err
        if self.when is not None:
            Expression(self.when, "when")  # ValueError saying why it does not compile
        return self


class RoutesConfig(_Strict):
    """How a record's key picks its destination: first matching rule, else the default."""

    rules: list[RouteRule] = Field(default_factory=list, description="Checked in order.")
    default: str | None = Field(
        default=None, description="Destination of keys no rule matches (null keys included)."
    )
    unmatched: Literal["fail", "skip"] = Field(
        default="fail",
        description="With no default: `fail` starts the record's workflow, which fails with a "
        "readable reason; `skip` logs and counts the record and moves on.",
    )


class IngestConfig(_Strict):
    """How ingest hands records to Temporal."""

    mode: Literal["per_record", "batch"] = Field(
        default="per_record",
        description="`per_record`: one ExportRecord workflow per record. `batch`: one "
        "ExportRange workflow per contiguous offset range of a partition (up to `max_records`), "
        "records by reference, one activity per destination and `batch_size` records.",
    )
    payloads: Literal["inline", "reference"] = Field(
        default="inline",
        description="Per-record mode: `inline` carries the record in the workflow input (visible "
        "in the UI; retries do not depend on Kafka retention); `reference` carries only its "
        "coordinates and the worker reads it from Kafka. Records whose encoded input is over "
        "temporal.max_input_bytes always go by reference. Batch mode is always by reference.",
    )
    max_records: int = Field(
        default=5000,
        ge=1,
        le=10_000,
        description="Batch mode: most records in one range. A range closes on `max_records`, "
        "`max_bytes` or `max_wait`, whichever comes first.",
    )
    max_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        description="Batch mode: most bytes (keys and values, as stored in Kafka) in one range; "
        "a single larger record gets a range of its own.",
    )
    max_wait: Duration = Field(
        default=timedelta(milliseconds=200),
        description="Batch mode: longest a partly filled range waits for more records.",
    )
    fairness: bool = Field(
        default=True,
        description="Per-record mode: give each record's workflow its destination's name as "
        "Temporal fairness key, so the shared workflow task queue dispatches destinations in "
        "turn and a burst for one destination never queues another's records behind it; and "
        "start a congested destination's records at low priority (see `congested_after`). "
        "Fairness needs task-queue fairness on the server (`courier config "
        "temporal-dynamic-config`); a server without it ignores the key.",
    )
    congested_after: Duration = Field(
        default=timedelta(seconds=10),
        description="Per-record mode, with `fairness`: a destination whose queue would make a "
        "new export wait longer than this (its backlog over the rate it drains at: a rate "
        "limit, an open circuit, no worker) is congested, and its records' workflows start at "
        "low priority: their first workflow task only queues the export, so other destinations "
        "go first on the shared workflow workers.",
    )


class WorkersConfig(_Strict):
    """How worker processes start and stop."""

    graceful_shutdown: Duration = Field(
        default=timedelta(seconds=20),
        description="On SIGTERM a worker stops polling at once and lets in-flight exports "
        "finish for this long before cancelling them (they are then retried elsewhere). Keep "
        "it below the orchestrator's kill grace period (Kubernetes: 30 s).",
    )
    open_timeout: Duration = Field(
        default=timedelta(seconds=30),
        description="Longest one attempt to open a destination (connect, create its table) may "
        "take; failed attempts are retried with backoff up to open_max_backoff.",
    )
    open_max_backoff: Duration = Field(
        default=timedelta(seconds=60),
        description="Longest wait between two attempts to open a destination.",
    )


TopicName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]
"""A Kafka topic's name (letters, digits and ``._-``)."""


class DeadLetterKafka(_Strict):
    """Another Kafka cluster for the dead-letter topics: its brokers, TLS and SASL."""

    bootstrap_servers: str = Field(description="Comma-separated host:port list of its brokers.")
    security: KafkaSecurity = Field(
        default_factory=KafkaSecurity,
        description="Its TLS and SASL settings, as in section kafka.security.",
    )


class DeadLetterConfig(_Strict):
    """Dead-letter topics: where a record that fails for good is written before its workflow fails.

    The record goes byte for byte, with its failure's context in headers (docs/operations.md).
    """

    topic: TopicName | None = Field(
        default=None,
        description="The dead-letter topic of every destination, and of records that had no "
        "route or could not be handed off; unset: none (except those in `destinations`).",
    )
    destinations: dict[str, TopicName | None] = Field(
        default_factory=dict,
        description="Per destination name: its own dead-letter topic instead of `topic`, or "
        "null for none.",
    )
    kafka: DeadLetterKafka | None = Field(
        default=None,
        description="The cluster the topics are on; unset: the one of section kafka (its "
        "brokers, TLS and SASL).",
    )

    def topic_for(self, destination: str | None) -> str | None:
        """The dead-letter topic of a destination's records (None: a record with no route)."""
        if destination is not None and destination in self.destinations:
            return self.destinations[destination]
        return self.topic

    def topics(self) -> set[str]:
        """Every dead-letter topic configured."""
        found = {t for t in self.destinations.values() if t is not None}
        return found | ({self.topic} if self.topic else set())

    def cluster(self, kafka: KafkaConfig) -> KafkaConfig:
        """Connection settings of the dead-letter cluster: ``kafka``'s, or the own ones."""
        if self.kafka is None:
            return kafka
        return kafka.model_copy(
            update={
                "bootstrap_servers": self.kafka.bootstrap_servers,
                "security": self.kafka.security,
            }
        )


class CourierConfig(_Strict):
    """The whole Courier configuration."""

    kafka: KafkaConfig = Field(description="Where records come from (section kafka).")
    temporal: TemporalConfig = Field(
        default_factory=TemporalConfig, description="Which Temporal runs the workflows."
    )
    destinations: list[AnyDestinationConfig] = Field(
        min_length=1, description="Where records go; each entry's `kind` picks its section."
    )
    routes: RoutesConfig = Field(
        default_factory=RoutesConfig, description="How a key picks its destination."
    )
    ingest: IngestConfig = Field(
        default_factory=IngestConfig, description="How records are handed to Temporal."
    )
    workers: WorkersConfig = Field(
        default_factory=WorkersConfig, description="How worker processes start and stop."
    )
    dead_letter: DeadLetterConfig = Field(
        default_factory=DeadLetterConfig,
        description="Where records that fail for good are written (section dead_letter).",
    )
    kubernetes: KubernetesConfig = Field(
        default_factory=KubernetesConfig,
        description="How `courier deploy k8s` lays Courier out on Kubernetes.",
    )
    tracing: TracingConfig = Field(
        default_factory=TracingConfig,
        description="OpenTelemetry traces of each record's path (section tracing); off by default.",
    )

    @model_validator(mode="after")
    def _names_resolve(self) -> CourierConfig:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(duplicates)}")
        known = set(names)
        targets = [("routes.default", self.routes.default)] + [
            (f"routes.rules[{i}].destination", r.destination)
            for i, r in enumerate(self.routes.rules)
        ]
        targets += [(f"kubernetes.destinations.{n}", n) for n in self.kubernetes.destinations]
        for where, target in targets:
            if target is not None and target not in known:
                raise ValueError(
                    f"{where}: unknown destination {target!r}; known: {', '.join(sorted(known))}"
                )
        return self

    @model_validator(mode="after")
    def _ordering_needs_per_record(self) -> CourierConfig:
        ordered = [d.name for d in self.destinations if d.ordering == "key"]
        if ordered and self.ingest.mode == "batch":
            raise ValueError(
                f"ingest.mode: batch cannot keep the order of a key (ordering: key on "
                f"{', '.join(ordered)}); use ingest.mode: per_record, or ordering: none"
            )
        return self

    @model_validator(mode="after")
    def _dead_letters_resolve(self) -> CourierConfig:
        dead = self.dead_letter
        known = {d.name for d in self.destinations}
        unknown = sorted(set(dead.destinations) - known)
        if unknown:
            raise ValueError(
                f"dead_letter.destinations: unknown destination {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        if dead.kafka is None:
            pattern = re.compile(self.kafka.topic_pattern) if self.kafka.topic_pattern else None
            for topic in sorted(dead.topics()):
                if topic in self.kafka.topics or (pattern and pattern.match(topic)):
                    raise ValueError(
                        f"dead_letter: topic {topic!r} is one ingest consumes: its records "
                        "would be exported again; use another topic"
                    )
        return self

    def destination(self, name: str) -> DestinationConfig:
        """The destination called ``name``; KeyError names the known ones."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations)
        raise KeyError(f"no destination named {name!r}; known: {known}")

    def records_per_activity(self, name: str) -> int:
        """Most records one export activity of destination ``name`` carries."""
        if self.ingest.mode == "batch":
            return self.destination(name).records_per_batch_activity
        return 1


def _rebuild_with_the_kinds() -> None:
    CourierConfig.model_rebuild(force=True)


# `destinations` is validated as the union of the kinds registered when the model was built.
on_change(_rebuild_with_the_kinds)


TreePath = tuple[str | int, ...]
"""Where a value is in a parsed config tree: keys and list indexes."""


def _substitute(
    value: Any, environ: dict[str, str], where: TreePath, unset: list[tuple[TreePath, str]]
) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a parsed YAML tree; add
    the place and name of each unset variable without a default to ``unset``."""
    if isinstance(value, dict):
        return {k: _substitute(v, environ, (*where, k), unset) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, environ, (*where, i), unset) for i, v in enumerate(value)]
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            unset.append((where, name))
            return ""

        return _ENV_REFERENCE.sub(replace, value)
    return value


def _unset(name: str) -> str:
    return (
        f"environment variable {name} is not set; set {name} in the environment (or give a "
        f"default: ${{{name}:-value}})"
    )


def parse_config(
    data: Any, *, environ: dict[str, str] | None = None, source: yaml.Node | None = None
) -> CourierConfig:
    """Validate an already-parsed config tree; raise :class:`ConfigError` naming each field.

    ``source``: the YAML node tree ``data`` was read from, to say where each problem is.
    """
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping with kafka, destinations and routes")
    unset: list[tuple[TreePath, str]] = []
    resolved = _substitute(data, dict(os.environ if environ is None else environ), (), unset)
    if unset:
        lines = [f"  {located(where, source)}: {_unset(name)}" for where, name in unset]
        raise ConfigError("\n".join(lines), environment=True)
    try:
        return CourierConfig.model_validate(resolved)
    except ValidationError as err:
        raise ConfigError(_describe(err, resolved, source)) from None


def load_config(path: Path | str, *, environ: dict[str, str] | None = None) -> CourierConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        data, source = read_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
    try:
        return parse_config(data, environ=environ, source=source)
    except ConfigError as err:
        raise ConfigError(f"{path}: invalid config\n{err}", environment=err.environment) from None


def read_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """The parsed YAML document and its node tree (which knows each value's line and column)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()


def config_problem(path: Path, err: ConfigError) -> str:
    """A config error in one line (its per-field lines joined) and what to do."""
    head, *problems = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    if problems and err.environment:
        return f"{head}: {'; '.join(problems)}"  # each line says which variable to set
    if problems:
        return (
            f"{head}: {'; '.join(problems)}; fix the file (courier config reference describes "
            "every field)"
        )
    if not path.is_file():
        return f"{head}; pass --config FILE or set COURIER_CONFIG"
    return head


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message in one line: where, what, and in which construct (lines from 1)."""
    if not isinstance(err, yaml.MarkedYAMLError):  # e.g. a control character in the text
        return " ".join(str(err).replace(' in "<unicode string>",', " at").split()) + "; fix it"
    where = err.problem_mark or err.context_mark
    text = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
    text += err.problem or "syntax error"
    if err.context:
        text += f" ({err.context}"
        if err.context_mark and err.context_mark is not where:
            text += f" at line {err.context_mark.line + 1}, column {err.context_mark.column + 1}"
        text += ")"
    if err.note:
        text += f"; {err.note}"
    return " ".join(text.split()) + "; fix the YAML there"


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _joined(where: TreePath) -> str:
    """``where`` as written in messages, e.g. ``destinations[1].url``."""
    path = ""
    for part in where:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    return path


def located(where: TreePath, source: yaml.Node | None) -> str:
    """``where`` as written in messages, with its line and column in the file when known.

    The position is that of the key (or list item) ``where`` ends at, or of the nearest
    enclosing one that is in the file (a missing field: the section that lacks it).
    """
    mark, node = None, source
    for part in where:
        found = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    found, mark = value, key.start_mark
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part < len(node.value):
                found = node.value[part]
                mark = found.start_mark
        if found is None:
            break
        node = found
    text = _joined(where)
    if mark is None:
        return text
    return f"{text} (line {mark.line + 1}, column {mark.column + 1})"


def typed_nodes(tree: Any) -> Iterator[tuple[TreePath, Any, Any]]:
    """``(path, node, type)`` for every node of a parsed config tree that is a known field.

    ``type`` is what the node is validated as, with unions picked by the node (a destination by
    its ``kind``); a node whose type cannot be told (an unknown kind) is left out, with its
    children.
    """

    def walk(node: Any, annotation: Any, where: TreePath) -> Iterator[tuple[TreePath, Any, Any]]:
        kind = _resolve(annotation, node)
        if kind is None:
            return
        yield where, node, kind
        origin = get_origin(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(node, dict):
            for key, value in node.items():
                field = kind.model_fields.get(key) if isinstance(key, str) else None
                if field is not None:
                    yield from walk(value, field.annotation, (*where, key))
        elif origin is list and isinstance(node, list):
            for index, value in enumerate(node):
                yield from walk(value, get_args(kind)[0], (*where, index))
        elif origin is dict and isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, get_args(kind)[1], (*where, key))

    yield from walk(tree, CourierConfig, ())


def _resolve(annotation: Any, node: Any) -> Any:
    """The type ``node`` is validated as: Annotated unwrapped, a union's member picked."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        if any(isinstance(m, RegisteredKinds) for m in metadata):
            kind = node.get(DISCRIMINATOR) if isinstance(node, dict) else None
            return KINDS.get(kind) if isinstance(kind, str) else None
        return _resolve(base, node)
    if origin in (Union, types.UnionType):
        members = [_resolve(a, node) for a in get_args(annotation) if a is not type(None)]
        fitting = [m for m in members if m is not None and _fits(m, node)]
        return fitting[0] if len(fitting) == 1 else None
    return annotation


def _fits(kind: Any, node: Any) -> bool:
    """Whether a node of this shape (mapping, list, scalar) can be a ``kind``."""
    origin = get_origin(kind)
    mapping = origin is dict or (isinstance(kind, type) and issubclass(kind, BaseModel))
    if isinstance(node, dict):
        return mapping
    if isinstance(node, list):
        return origin is list
    return not mapping and origin is not list


def _known_fields(tree: Any, where: TreePath) -> list[str]:
    """The fields the section at ``where`` of a parsed config tree may have."""
    for path, _, kind in typed_nodes(tree):
        if path == where and isinstance(kind, type) and issubclass(kind, BaseModel):
            return list(kind.model_fields)
    return []


def _describe(err: ValidationError, data: Any, source: yaml.Node | None = None) -> str:
    """One ``field: reason`` line per pydantic error, with paths as written in YAML."""
    lines = []
    for problem in err.errors():
        where: list[str | int] = []
        node = data
        loc = problem["loc"]
        for index, part in enumerate(loc):
            if isinstance(part, int):
                where.append(part)
                node = node[part] if isinstance(node, list) and part < len(node) else None
            elif not (isinstance(node, dict) and part in node) and (
                index < len(loc) - 1 or problem["type"] != "missing"
            ):
                continue  # a union tag pydantic adds (e.g. the kind): not a field of the YAML
            else:
                where.append(part)
                node = node.get(part) if isinstance(node, dict) else None
        path = located(tuple(where), source)
        reason = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "missing":
            reason = "required field is missing"
        elif problem["type"] == "extra_forbidden":
            reason = "unknown field"
            known = _known_fields(data, tuple(where[:-1])) if where else []
            close = difflib.get_close_matches(str(where[-1]), known, n=3) if where else []
            if close:
                reason += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        elif problem["type"] == "union_tag_invalid":
            path = located((*where, DISCRIMINATOR), source)
            ctx = problem.get("ctx", {})
            reason = (
                f"unknown destination kind {ctx.get('tag')!r}; known: {ctx.get('expected_tags')}"
            )
        lines.append(f"  {path}: {reason}" if path else f"  {reason}")
    return "\n".join(lines)
