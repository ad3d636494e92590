"""The ``tracing`` section: OpenTelemetry traces of each record's path, off by default.

With ``tracing.enabled``, a process sends its spans over OTLP/HTTP (protobuf) to
``tracing.otlp_endpoint``. A record's trace starts at ingest's hand-off (``HandOff:ExportRecord``),
as a child of the producer's span when the Kafka record carries a W3C ``traceparent`` header
(and ``tracestate``); Temporal's ``TracingInterceptor`` (``temporalio.contrib.opentelemetry``)
carries it through the workflow to the export activity, and a REST destination sends the
activity's span as the request's ``traceparent``, so the partner's logs join the trace.

Disabled, nothing of OpenTelemetry's SDK is imported or set up: :func:`active` is None and every
helper here returns at once. The process's tracing is started once (:func:`start`, which
:func:`courier.temporal.client.connect` calls) and stopped with :func:`stop` (tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Span, Tracer
    from temporalio.plugin import SimplePlugin

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
HAND_OFF_SPAN = "HandOff:"
"""Prefix of the span of ingest's hand-off, followed by the workflow type it starts."""
ROOT_SPANS = (HAND_OFF_SPAN, "StartWorkflow:ExportRange", "SignalWithStartWorkflow:ExportKey")
"""Spans that may start a trace: a record's hand-off, a batch range's start, a key chain's
signal. Courier's own calls (worker reports, rate control's updates and queries) start none."""
TRACES_PATH = "/v1/traces"


class TracingConfig(BaseModel):
    """OpenTelemetry traces of each record's path, sent over OTLP/HTTP; off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=False,
        description="Send a trace of each record's path (hand-off, workflow, export activity) "
        "to `otlp_endpoint`; a record's W3C traceparent header makes it part of the producer's "
        "trace, and REST requests carry the traceparent on (docs/operations.md, Tracing).",
    )
    otlp_endpoint: str = Field(
        default="http://127.0.0.1:4318",
        description="OTLP/HTTP (protobuf) endpoint of the collector, e.g. "
        "http://otel-collector:4318; spans are posted to its /v1/traces (a URL that already "
        "ends in /v1/traces is used as it is).",
    )
    service_name: str = Field(
        default="courier", min_length=1, description="The `service.name` of Courier's spans."
    )
    sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Share of traces kept when a record's traceparent carries no sampling "
        "decision (a record without one); a producer's decision (its sampled flag) is always "
        "followed.",
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{url!r} is not an http:// or https:// URL; give the collector's OTLP/HTTP "
                "endpoint, e.g. http://otel-collector:4318"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        return url

    def traces_url(self) -> str:
        """The URL spans are posted to."""
        url = self.otlp_endpoint.rstrip("/")
        return url if url.endswith(TRACES_PATH) else url + TRACES_PATH


@dataclasses.dataclass
class Tracing:
    """The process's tracing: its tracer provider and the tracer Courier's spans come from."""

    config: TracingConfig
    provider: TracerProvider
    tracer: Tracer

    def temporal_plugin(self) -> SimplePlugin:
        """A client plugin: Temporal's ``TracingInterceptor`` on the client and on every worker
        made from it, and ``opentelemetry`` passed through the workflow sandbox."""
        from temporalio.contrib.opentelemetry import TracingInterceptor
        from temporalio.plugin import SimplePlugin
        from temporalio.worker import WorkflowRunner
        from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

        def runner(existing: WorkflowRunner | None) -> WorkflowRunner:
            # As the SDK's OpenTelemetryPlugin does: the interceptor's workflow side calls
            # OpenTelemetry inside the sandbox, where a lazy import or environment read of
            # some OpenTelemetry releases fails the workflow task (the pinned one needs none).
            if existing is None:
                return SandboxedWorkflowRunner(
                    restrictions=SandboxedWorkflowRunner().restrictions.with_passthrough_modules(
                        "opentelemetry"
                    )
                )
            if isinstance(existing, SandboxedWorkflowRunner):
                return dataclasses.replace(
                    existing,
                    restrictions=existing.restrictions.with_passthrough_modules("opentelemetry"),
                )
            return existing

        return SimplePlugin(
            "courier.Tracing",
            interceptors=[TracingInterceptor(self.tracer)],
            workflow_runner=runner,
        )


_lock = threading.Lock()
_active: Tracing | None = None


def active() -> Tracing | None:
    """The process's tracing, or None when it is off (the default)."""
    return _active


def start(config: TracingConfig, *, exporter: SpanExporter | None = None) -> Tracing | None:
    """Set up the process's tracing from ``config``; None (and nothing set up) when disabled.

    Once per process: a second call returns the tracing already running. ``exporter`` replaces
    the OTLP exporter and exports each span as it ends (tests: an ``InMemorySpanExporter``).
    """
    global _active
    if not config.enabled:
        return None
    with _lock:
        if _active is not None:
            return _active
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: config.service_name}),
            sampler=_records_only(config.sample_ratio),
        )
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=config.traces_url()))
            )
        else:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        _active = Tracing(config, provider, provider.get_tracer("courier"))
        return _active


def stop() -> None:
    """Export what is pending and shut the process's tracing down (a no-op when off)."""
    global _active
    with _lock:
        tracing, _active = _active, None
    if tracing is not None:
        tracing.provider.shutdown()


def _records_only(ratio: float) -> Sampler:
    """Parent-based sampling at ``ratio``, where only :data:`ROOT_SPANS` may start a trace."""
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )
    from opentelemetry.trace import get_current_span

    class RecordsOnly(Sampler):
        def __init__(self) -> None:
            self._inner = ParentBased(TraceIdRatioBased(ratio))
            self._drop = SamplingResult(Decision.DROP)

        def should_sample(
            self, parent_context: Context | None, trace_id: int, name: str, *args: Any, **kw: Any
        ) -> SamplingResult:
            parent = get_current_span(parent_context).get_span_context()
            if not parent.is_valid and not name.startswith(ROOT_SPANS):
                return self._drop
            return self._inner.should_sample(parent_context, trace_id, name, *args, **kw)

        def get_description(self) -> str:
            return f"RecordsOnly{{ParentBased{{TraceIdRatioBased{{{ratio}}}}}}}"

    return RecordsOnly()


def _carrier(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """The W3C trace headers of a Kafka record (names in any case), as text."""
    carrier: dict[str, str] = {}
    for name, value in headers or ():
        key = name.lower()
        if key in (TRACEPARENT, TRACESTATE) and value is not None:
            with contextlib.suppress(UnicodeDecodeError):
                carrier[key] = value.decode("ascii").strip()
    return carrier


@contextlib.contextmanager
def record_span(
    tracing: Tracing,
    name: str,
    headers: Iterable[tuple[str, bytes | None]] | None,
    attributes: Mapping[str, str | int],
) -> Iterator[Span]:
    """A consumer span for one record, current while the block runs: a child of the record's
    ``traceparent`` (and ``tracestate``) when it carries a valid one, else a new trace."""
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(_carrier(headers))
    with tracing.tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=dict(attributes)
    ) as span:
        yield span


def set_error(span: Span, reason: str) -> None:
    """Mark ``span`` as failed with ``reason`` (shortened)."""
    from opentelemetry.trace import StatusCode

    span.set_status(StatusCode.ERROR, reason if len(reason) <= 200 else reason[:199] + "…")


def inject_traceparent(headers: MutableMapping[str, str], configured: Iterable[str] = ()) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to outgoing ``headers``.

    Nothing when tracing is off or no span is current. The user's headers win: with a
    ``traceparent`` among ``configured`` (the names of headers the user set) nothing is added,
    with only a ``tracestate`` the traceparent is added beside it.
    """
    if _active is None:
        return
    taken = {name.lower() for name in configured}
    if TRACEPARENT in taken:
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    for name, value in carrier.items():
        if name not in taken:
            headers[name] = value
