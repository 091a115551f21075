"""OpenTelemetry: the handler's span continues the emitter's trace, across processes on every
live broker (and across two apps on the memory broker), with the SDK's in-memory exporter on
both sides. Redis Pub/Sub carries no headers: there the consumer starts a new trace."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from dispytch import App, Event, EventBase
from dispytch.memory import MemoryBackend, MemoryBroker
from dispytch.otel import OpenTelemetryMiddleware
from tests.conformance.conftest import BackendUnderTest
from tests.helpers import wait_until
from tests.operations.support import Service

Body = dict[str, Any]


def traced(exporter: InMemorySpanExporter) -> OpenTelemetryMiddleware:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OpenTelemetryMiddleware(tracer_provider=provider)


def event_class(topic: str) -> type[EventBase]:
    return type(
        "Traced",
        (EventBase,),
        {"__topic__": topic, "__event_type__": "traced", "__annotations__": {"n": int}},
    )


def one(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], kind: SpanKind) -> ReadableSpan:
    (span,) = [s for s in spans if s.kind == kind]
    return span


async def test_two_apps_on_the_memory_broker() -> None:
    broker = MemoryBroker()
    sent, received = InMemorySpanExporter(), InMemorySpanExporter()
    emitter = App(backend=MemoryBackend("memory://", broker=broker), middleware=[traced(sent)])
    consumer = App(
        backend=MemoryBackend("memory://", broker=broker),
        group="consumers",
        middleware=[traced(received)],
    )
    seen: list[str | None] = []
    attempts: list[int] = []

    @consumer.handler(topic="orders", event="traced", retries=1, retry_interval=0)
    async def handle(event: Event[Body]) -> None:
        attempts.append(1)
        seen.append(baggage.get_baggage("tenant"))
        if len(attempts) == 1:
            raise ConnectionError("first attempt fails")

    async with consumer, emitter:
        token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            await emitter.emit(event_class("orders")(n=1))
        finally:
            otel_context.detach(token)
        await wait_until(lambda: len(received.get_finished_spans()) == 1, what="consumer span")
    producer = one(sent.get_finished_spans(), SpanKind.PRODUCER)
    span = one(received.get_finished_spans(), SpanKind.CONSUMER)
    assert span.context.trace_id == producer.context.trace_id
    assert span.parent is not None and span.parent.span_id == producer.context.span_id
    assert seen == ["acme", "acme"]  # baggage travelled in the headers
    assert span.name == "process orders" and producer.name == "send orders"
    attributes = dict(span.attributes or {})
    assert attributes["messaging.system"] == "memory"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.consumer.group.name"] == "consumers"
    assert attributes["messaging.destination.name"] == "orders"
    assert (
        attributes["messaging.message.id"]
        == dict(producer.attributes or {})["messaging.message.id"]
    )
    assert attributes["dispytch.outcome"] == "handled"
    events = [e.name for e in span.events]
    assert events == ["exception", "retry"]  # the failed first attempt, recorded and retried
    assert span.status.status_code != StatusCode.ERROR


async def test_a_dead_letter_is_an_event_and_an_error_status() -> None:
    broker = MemoryBroker()
    received = InMemorySpanExporter()
    app = App(backend=MemoryBackend("memory://", broker=broker), middleware=[traced(received)])

    @app.handler(topic="orders", event="traced")
    async def handle(event: Event[Body]) -> None:
        raise ValueError("bad order")

    async with app:
        await app.emit(event_class("orders")(n=1))
        await wait_until(lambda: len(received.get_finished_spans()) == 2, what="two spans")
    span = one(received.get_finished_spans(), SpanKind.CONSUMER)
    producer = one(received.get_finished_spans(), SpanKind.PRODUCER)
    assert span.parent is not None and span.parent.span_id == producer.context.span_id
    assert [e.name for e in span.events] == ["exception", "dead_letter"]
    assert span.status.status_code == StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "ValueError"


CONSUMER = """
import json, os
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from dispytch import App, Event
from dispytch.otel import OpenTelemetryMiddleware

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
app = App(
    os.environ["OPS_URL"],
    group=os.environ["OPS_GROUP"],
    middleware=[OpenTelemetryMiddleware(tracer_provider=provider)],
    **json.loads(os.environ["OPS_OPTIONS"]),
)

@app.handler(topic=os.environ["OPS_TOPIC"], event="traced")
async def handle(event: Event[dict]) -> None:
    print("HANDLED", event.id, flush=True)

@app.on_shutdown
def dump() -> None:
    spans = [
        {
            "kind": span.kind.name,
            "trace_id": span.context.trace_id,
            "parent": span.parent.span_id if span.parent else None,
            "attributes": dict(span.attributes),
        }
        for span in exporter.get_finished_spans()
    ]
    with open(os.environ["OPS_SPANS"], "w") as f:
        json.dump(spans, f)
"""


async def test_across_processes_on_every_live_broker(
    live_backend: BackendUnderTest,
    topic: str,
    uid: str,
    options: dict[str, Any],
    tmp_path: Path,
) -> None:
    spans_file = tmp_path / "spans.json"
    env = {
        **os.environ,
        "OPS_URL": live_backend.url,
        "OPS_GROUP": f"ops_{uid}",
        "OPS_TOPIC": topic,
        "OPS_OPTIONS": json.dumps(options),
        "OPS_SPANS": str(spans_file),
    }
    service = Service(tmp_path, CONSUMER, env=env)
    sent = InMemorySpanExporter()
    emitter = App(
        live_backend.url, group=f"ops_{uid}_emitter", middleware=[traced(sent)], **options
    )
    try:
        service.wait_for("listening as group")
        async with emitter:
            event = event_class(topic)(n=1)
            await emitter.emit(event)
        service.wait_for(f"HANDLED {event.id}")
    finally:
        assert service.stop() == 0, service.output
    producer = one(sent.get_finished_spans(), SpanKind.PRODUCER)
    (span,) = [s for s in json.loads(spans_file.read_text()) if s["kind"] == "CONSUMER"]
    assert span["attributes"]["messaging.message.id"] == event.id
    assert span["attributes"]["messaging.destination.name"] == topic
    system = {"redis_streams": "redis", "nats_core": "nats"}.get(
        live_backend.name, live_backend.name
    )
    assert span["attributes"]["messaging.system"] == system
    if live_backend.carries_headers:
        assert span["trace_id"] == producer.context.trace_id
        assert span["parent"] == producer.context.span_id
    else:  # Redis Pub/Sub: no headers, so a new trace (documented)
        assert span["trace_id"] != producer.context.trace_id
        assert span["parent"] is None
