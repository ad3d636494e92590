"""Tracing against the real stack: a record produced with a W3C ``traceparent`` header gets one
trace, the producer's, from ingest's hand-off through the export activity, and the partner's
request carries it on.

Courier runs in-process in per-record mode with tracing on; its spans are caught with the
OpenTelemetry SDK's ``InMemorySpanExporter`` (``courier.core.tracing.start(exporter=…)``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from courier.core import tracing
from courier.temporal.client import connect
from courier_devtools.receiver import Receiver
from courier_devtools.topics import create_topic
from tests.integration.harness import courier_running, eventually, pipeline_config
from tests.integration.test_batch_mode import FAST_RETRY

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN = "b7ad6b7169203331"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans of this process, caught in memory while the test runs."""
    exporter = InMemorySpanExporter()
    yield exporter
    tracing.stop()


def in_trace(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The finished spans of the producer's trace."""
    return [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == TRACE_ID]


def span_id(span: ReadableSpan) -> str:
    return f"{span.context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


async def test_a_records_trace_runs_from_its_producer_to_the_partners_request(
    stack: Any, unique: str, spans: InMemorySpanExporter
) -> None:
    async with Receiver() as receiver:
        config = pipeline_config(
            stack,
            unique,
            destinations=[
                {
                    "name": f"api-{unique}",
                    "kind": "rest",
                    "url": f"{receiver.url}/orders/{{key}}",
                    "retry": FAST_RETRY,
                }
            ],
            routes={"default": f"api-{unique}"},
            ingest={"mode": "per_record"},
        )
        config = config.model_copy(
            update={"tracing": config.tracing.model_copy(update={"enabled": True})}
        )
        topic = config.kafka.topics[0]
        await create_topic(stack.kafka_bootstrap, topic, partitions=1)
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                topic,
                key=b"o-1",
                value=json.dumps({"total": 42}).encode(),
                headers=[
                    ("traceparent", f"00-{TRACE_ID}-{PRODUCER_SPAN}-01".encode()),
                    ("tracestate", b"producer=orders"),
                ],
            )
        finally:
            await producer.stop()

        assert tracing.start(config.tracing, exporter=spans) is not None
        client = await connect(config.temporal, tracing=config.tracing)
        async with courier_running(client, config):

            async def delivered() -> list[Any]:
                return receiver.effect_requests("/orders/")

            async def exported() -> list[ReadableSpan]:
                return [s for s in in_trace(spans) if s.name == "RunActivity:export"]

            [request] = await eventually(delivered, timeout=90)
            await eventually(exported, timeout=30)

    by_name = {s.name: s for s in in_trace(spans)}
    hand_off = by_name["HandOff:ExportRecord"]
    start = by_name["StartWorkflow:ExportRecord"]
    run = by_name["RunWorkflow:ExportRecord"]
    start_activity = by_name["StartActivity:export"]
    run_activity = by_name["RunActivity:export"]
    # (a) One trace, the producer's, as a tree: the hand-off under the producer's span, the
    # workflow's start under the hand-off; the workflow's spans and the activity's start under
    # that start (the TracingInterceptor parents a workflow's spans on the context its start
    # sent, not on RunWorkflow, which it ends at once); the activity's run under its start.
    assert parent_id(hand_off) == PRODUCER_SPAN
    assert parent_id(start) == span_id(hand_off)
    assert parent_id(run) == span_id(start)
    assert parent_id(start_activity) == span_id(start)
    assert parent_id(run_activity) == span_id(start_activity)
    assert hand_off.context.trace_state.get("producer") == "orders"
    workflow_id = hand_off.attributes and hand_off.attributes["temporalWorkflowID"]
    assert start.attributes and start.attributes["temporalWorkflowID"] == workflow_id
    assert run_activity.attributes and run_activity.attributes["temporalWorkflowID"] == workflow_id
    assert all(s.resource.attributes["service.name"] == "courier" for s in in_trace(spans))
    # (b) The partner's request carries the trace: the export activity's span is its parent.
    flags = run_activity.context.trace_flags
    assert request.headers["traceparent"] == f"00-{TRACE_ID}-{span_id(run_activity)}-{flags:02x}"
    assert flags.sampled
    assert request.headers["tracestate"] == "producer=orders"
