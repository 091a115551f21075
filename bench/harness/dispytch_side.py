"""The Dispytch variant, the same for every backend: an App from the URL, one handler."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Sequence
from typing import Any

from dispytch import App, Event, EventBase
from harness.common import (
    EVENT_TYPE,
    Body,
    Meter,
    OrderedWork,
    RssSampler,
    Spec,
    body,
    event_class,
    max_rss_kib,
    rss_kib,
    timed_publish,
)


def middleware(spec: Spec) -> list[Any]:
    """The middleware ``--middleware`` asked for: none, Prometheus, or OpenTelemetry (the SDK,
    spans batched to an exporter that drops them, as a service exporting them would)."""
    name = spec.options.get("middleware", "none")
    if name == "prometheus":
        from prometheus_client import CollectorRegistry

        from dispytch.prometheus import PrometheusMiddleware

        return [PrometheusMiddleware(CollectorRegistry())]
    if name == "otel":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from dispytch.otel import OpenTelemetryMiddleware

        class Drop(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        return [OpenTelemetryMiddleware(tracer_provider=provider)]
    return []


def consuming_app(spec: Spec, meter: Meter, sleep: float = 0.0, **options: Any) -> App:
    """An app whose one handler validates ``Event[Body]`` (and awaits ``sleep`` seconds)."""
    app = App(
        spec.url,
        group=spec.group,
        concurrency=int(spec.options.get("concurrency", 100)),
        ordering=spec.options.get("ordering", "key"),
        middleware=middleware(spec),
        **options,
    )
    if sleep:

        @app.handler(topic=spec.target, event=EVENT_TYPE)
        async def slow(event: Event[Body]) -> None:
            await asyncio.sleep(sleep)
            meter.tick()

    else:

        @app.handler(topic=spec.target, event=EVENT_TYPE)
        async def handle(event: Event[Body]) -> None:
            meter.tick()

    return app


async def consume(spec: Spec, **options: Any) -> dict[str, Any]:
    meter = Meter(spec.events)
    app = consuming_app(spec, meter, **options)
    await app.start()
    try:
        await meter.wait()
    finally:
        await app.stop()
    return meter.result()


async def io_ordered(spec: Spec, **options: Any) -> dict[str, Any]:
    """Handlers await ``sleep_ms``; every key's events must arrive in ``seq`` order."""
    meter = Meter(spec.events)
    sleep = float(spec.options.get("sleep_ms", 10)) / 1000
    work = OrderedWork(meter, sleep)
    app = App(
        spec.url,
        group=spec.group,
        concurrency=int(spec.options.get("concurrency", 1000)),
        ordering="key",
        middleware=middleware(spec),
        **options,
    )

    @app.handler(topic=spec.target, event=EVENT_TYPE)
    async def handle(event: Event[Body]) -> None:
        await work.handle(event.body.key, event.body.seq)

    await app.start()
    try:
        await meter.wait(idle_timeout=30)
    finally:
        await app.stop()
    return work.result()


async def memory(spec: Spec, **options: Any) -> dict[str, Any]:
    """Drain a big backlog with a slow handler while sampling RSS."""
    meter = Meter(spec.events)
    sleep = float(spec.options.get("sleep_ms", 1)) / 1000
    app = consuming_app(spec, meter, sleep=sleep, **options)
    sampler = RssSampler(float(spec.options.get("sample_every", 0.5)))
    base = rss_kib()
    sampler.start()
    await app.start()
    started = rss_kib()
    try:
        await meter.wait(total_timeout=1800)
    finally:
        await app.stop()
        await sampler.stop()
    samples = sampler.samples
    return meter.result(
        rss_before_kib=base,
        rss_started_kib=started,
        max_rss_kib=max_rss_kib(),
        ru_maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        rss_samples=[(round(t, 2), kib) for t, kib in samples],
    )


def publish_events(spec: Spec, n: int, config: Any = None) -> Sequence[EventBase]:
    cls = event_class(spec.target, config)
    return [cls(**body(i)) for i in range(n)]


async def publish(spec: Spec, **options: Any) -> dict[str, Any]:
    """Sequential confirmed emits, then ``emit_many`` in batches of ``batch``."""
    app = App(spec.url, group=spec.group, middleware=middleware(spec), **options)
    await app.start()
    try:
        return await timed_publish(spec, app.emit, app.emit_many, lambda n: publish_events(spec, n))
    finally:
        await app.stop()
