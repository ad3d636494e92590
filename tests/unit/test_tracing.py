"""Tracing (``courier.core.tracing``): the config section, the hand-off's span from a record's
``traceparent``, the REST request's ``traceparent``, and nothing of OpenTelemetry when off.

Spans are caught with the OpenTelemetry SDK's ``InMemorySpanExporter``; the whole path through
Temporal runs in tests/integration/test_tracing.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import ConsumerRecord
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from courier.config.model import ConfigError, parse_config
from courier.core import tracing
from courier.core.tracing import TracingConfig
from ingest import handoff
from ingest.routing import Router
from tests.activities.test_rest import opened, outgoing
from tests.unit.test_handoff import CONFIG, TOPIC_ID, FakeClient

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, its spans caught in memory."""
    exporter = InMemorySpanExporter()
    assert tracing.start(TracingConfig(enabled=True), exporter=exporter) is not None
    try:
        yield exporter
    finally:
        tracing.stop()


def record(headers: list[tuple[str, bytes | None]]) -> ConsumerRecord:
    value = b"{}"
    return ConsumerRecord(
        "orders", 1, 3, 1700000000000, 0, b"o-1", value, None, 3, len(value), headers
    )


class SpanSeeingClient(FakeClient):
    """A fake client that notes the span current when each workflow is started."""

    def __init__(self, failures: list[Exception] | None = None) -> None:
        super().__init__(failures or [])
        self.current: list[trace.SpanContext] = []

    async def start_workflow(self, *args: Any, **kwargs: Any) -> None:
        self.current.append(trace.get_current_span().get_span_context())
        await super().start_workflow(*args, **kwargs)


async def hand_off(client: FakeClient, rec: ConsumerRecord) -> handoff.HandOff:
    decision = Router(CONFIG.routes).route(rec.key)
    return await handoff.hand_off(client, CONFIG, rec, TOPIC_ID, decision)  # type: ignore[arg-type]


# The config section


def config_with(tracing_section: dict[str, Any]) -> Any:
    return parse_config(
        {
            "kafka": {"topics": ["t"]},
            "destinations": [{"name": "f", "kind": "file", "path": "/tmp/x.jsonl"}],
            "routes": {"default": "f"},
            "tracing": tracing_section,
        },
        environ={},
    )


def test_tracing_is_off_by_default_and_sends_to_the_collectors_traces_path() -> None:
    section = config_with({}).tracing

    assert section.enabled is False
    assert section.traces_url() == "http://127.0.0.1:4318/v1/traces"
    assert TracingConfig(otlp_endpoint="https://c:4318/v1/traces").traces_url() == (
        "https://c:4318/v1/traces"
    )
    assert tracing.start(section) is None and tracing.active() is None


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"otlp_endpoint": "otel-collector:4318"}, "tracing.otlp_endpoint: 'otel-collector:4318' "
         "is not an http:// or https:// URL; give the collector's OTLP/HTTP endpoint"),
        ({"otlp_endpoint": "http://c:99999"}, "tracing.otlp_endpoint: 'http://c:99999' has an "
         "invalid port"),
        ({"sample_ratio": 1.5}, "tracing.sample_ratio: Input should be less than or equal to 1"),
        ({"enable": True}, "tracing.enable: unknown field; did you mean 'enabled'?"),
    ],
)  # fmt: skip
def test_a_bad_tracing_section_is_one_line_naming_the_field(
    section: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(section)

    assert words in str(caught.value)


# Off: nothing of OpenTelemetry


def test_with_tracing_off_no_opentelemetry_module_is_imported() -> None:
    code = (
        "import sys, ingest.handoff, ingest.consumer, activities.rest, worker, "
        "courier.temporal.client, courier.app.service; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'dev'}"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )

    assert result.stdout.strip() == "[]"


async def test_with_tracing_off_the_hand_off_makes_no_span_and_requests_carry_no_traceparent() -> (
    None
):
    client = SpanSeeingClient()
    result = await hand_off(client, record([("traceparent", TRACEPARENT.encode())]))
    seen: list[httpx.Request] = []
    destination = await opened(lambda r: seen.append(r) or httpx.Response(200))
    await destination.write([outgoing()])
    await destination.close()

    assert result.started
    assert not client.current[0].is_valid
    assert "traceparent" not in seen[0].headers


# The hand-off's span


async def test_a_records_traceparent_makes_the_hand_off_a_child_of_the_producers_span(
    spans: InMemorySpanExporter,
) -> None:
    client = SpanSeeingClient()
    headers = [("traceparent", TRACEPARENT.encode()), ("tracestate", b"vendor=x")]

    await hand_off(client, record(headers))

    [span] = spans.get_finished_spans()
    assert span.name == "HandOff:ExportRecord"
    assert span.kind is SpanKind.CONSUMER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PRODUCER_SPAN
    assert span.context.trace_state.get("vendor") == "x"
    assert span.attributes == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": "orders",
        "messaging.destination.partition.id": "1",
        "messaging.kafka.offset": 3,
        "messaging.consumer.group.name": "g",
        "courier.destination": "api",
        "temporalWorkflowID": f"courier/g/orders@{TOPIC_ID}/1/3",
    }
    # The workflow is started inside it: Temporal's StartWorkflow span becomes its child.
    assert client.current == [span.context]


@pytest.mark.parametrize(
    "headers",
    [[], [("traceparent", b"not-a-traceparent")], [("traceparent", None)], [("x", b"y")]],
)
async def test_a_record_without_a_valid_traceparent_starts_a_trace_of_its_own(
    spans: InMemorySpanExporter, headers: list[tuple[str, bytes | None]]
) -> None:
    await hand_off(SpanSeeingClient(), record(headers))

    [span] = spans.get_finished_spans()
    assert span.parent is None
    assert format(span.context.trace_id, "032x") != TRACE_ID


async def test_the_traceparent_header_name_is_matched_in_any_case(
    spans: InMemorySpanExporter,
) -> None:
    await hand_off(SpanSeeingClient(), record([("TraceParent", TRACEPARENT.encode())]))

    [span] = spans.get_finished_spans()
    assert format(span.context.trace_id, "032x") == TRACE_ID


async def test_a_producer_that_did_not_sample_its_trace_gets_no_spans(
    spans: InMemorySpanExporter,
) -> None:
    unsampled = f"00-{TRACE_ID}-{PRODUCER_SPAN}-00"
    client = SpanSeeingClient()

    result = await hand_off(client, record([("traceparent", unsampled.encode())]))

    assert result.started
    assert spans.get_finished_spans() == ()


async def test_a_record_handed_off_as_failed_has_an_error_span(
    spans: InMemorySpanExporter,
) -> None:
    refused = RPCError("payload too large", RPCStatusCode.INVALID_ARGUMENT, b"")
    client = SpanSeeingClient([refused])

    result = await hand_off(client, record([("traceparent", TRACEPARENT.encode())]))

    [span] = spans.get_finished_spans()
    assert result.failed_reason is not None
    assert span.status.status_code is StatusCode.ERROR
    assert "payload too large" in (span.status.description or "")
    # Both start requests (the record's, then its failed workflow's) ran inside the span.
    assert client.current == [span.context, span.context]


def test_only_a_records_spans_start_traces(spans: InMemorySpanExporter) -> None:
    active = tracing.active()
    assert active is not None
    tracer = active.tracer

    with tracer.start_as_current_span("SignalWorkflow:report"):  # Courier's own calls
        with tracer.start_as_current_span("child"):
            pass
    with tracer.start_as_current_span("StartWorkflow:ExportRange"):  # a batch range
        with tracer.start_as_current_span("StartActivity:export_range"):
            pass

    assert sorted(s.name for s in spans.get_finished_spans()) == [
        "StartActivity:export_range",
        "StartWorkflow:ExportRange",
    ]


# The REST request's traceparent


async def sent_headers(
    spans: InMemorySpanExporter, headers: dict[str, str] | None = None
) -> tuple[httpx.Headers, trace.SpanContext]:
    seen: list[httpx.Request] = []
    destination = await opened(
        lambda r: seen.append(r) or httpx.Response(200), headers=headers or {}
    )
    active = tracing.active()
    assert active is not None
    with active.tracer.start_as_current_span("HandOff:ExportRecord") as span:
        await destination.write([outgoing(), outgoing(offset=8)])
    await destination.close()
    assert len(seen) == 2
    assert seen[0].headers.get("traceparent") == seen[1].headers.get("traceparent")
    return seen[0].headers, span.get_span_context()


async def test_a_rest_request_carries_the_current_span_as_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    headers, context = await sent_headers(spans)

    trace_id, span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")
    assert headers["traceparent"] == f"00-{trace_id}-{span_id}-{context.trace_flags:02x}"
    assert context.trace_flags.sampled
    assert "tracestate" not in headers  # the span has none


async def test_a_traceparent_the_destination_configures_wins(
    spans: InMemorySpanExporter,
) -> None:
    mine = f"00-{'1' * 32}-{'2' * 16}-01"

    headers, _ = await sent_headers(spans, {"TraceParent": mine})

    assert headers.get_list("traceparent") == [mine]


# Wiring into Temporal


def test_the_temporal_plugin_traces_workers_and_passes_opentelemetry_through_the_sandbox(
    spans: InMemorySpanExporter,
) -> None:
    active = tracing.active()
    assert active is not None
    plugin = active.temporal_plugin()

    [interceptor] = plugin.interceptors or []
    runner = plugin.workflow_runner
    assert callable(runner)
    sandboxed = runner(SandboxedWorkflowRunner())
    assert isinstance(interceptor, TracingInterceptor)
    assert interceptor.tracer is active.tracer
    assert isinstance(sandboxed, SandboxedWorkflowRunner)
    assert "opentelemetry" in sandboxed.restrictions.passthrough_modules


def test_tracing_starts_once_per_process(spans: InMemorySpanExporter) -> None:
    first = tracing.active()

    again = tracing.start(TracingConfig(enabled=True, service_name="other"))

    assert again is first
