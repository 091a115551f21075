"""OpenTelemetry tracing for an app (``pip install "dispytch[otel]"``: the OpenTelemetry API;
install and configure the SDK and an exporter in the service).

.. code-block:: python

    from dispytch import App
    from dispytch.otel import OpenTelemetryMiddleware

    app = App("kafka://localhost:9092", group="billing", middleware=[OpenTelemetryMiddleware()])

Each emitted event gets a ``PRODUCER`` span, and the W3C trace context of that span
(``traceparent``, ``tracestate``) and the current baggage are written into the message's
headers. The app that handles it reads them back: its ``CONSUMER`` span continues the trace,
with the producer span as its parent, and stays current while the handlers run, so spans
they open and events they emit belong to the same trace. Handler attempts that failed are
recorded on the consumer span as exceptions (a retried one also as a ``retry`` event), a dead
letter as a ``dead_letter`` event with the span's status set to error.

Attributes follow the OpenTelemetry messaging semantic conventions: ``messaging.system``,
``messaging.destination.name`` (the concrete topic), ``messaging.destination.template`` (the
pattern), ``messaging.operation.type`` (``send``, ``process``), ``messaging.operation.name``,
``messaging.message.id`` (the event id), ``messaging.consumer.group.name``,
``messaging.message.body.size``, ``messaging.destination.partition.id``, ``server.address``
and ``server.port``; and ``dispytch.event.type``, ``dispytch.handlers`` (comma-separated),
``dispytch.outcome``, ``dispytch.delivery_attempt``.

Redis Pub/Sub messages carry no headers: there a consumer span starts a new trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagate import get_global_textmap
    from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
    from opentelemetry.util.types import AttributeValue
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from dispytch.errors import MissingExtraError

    raise MissingExtraError("otel", "opentelemetry-api") from exc

from dispytch import __version__
from dispytch.middleware import (
    ConsumeContext,
    ConsumeNext,
    Middleware,
    PublishContext,
    PublishNext,
)

if TYPE_CHECKING:
    from dispytch.app import App

__all__ = ["OpenTelemetryMiddleware", "messaging_system"]

#: URL scheme -> ``messaging.system`` (the semantic conventions' value where they name one).
_SYSTEMS = {
    "kafka": "kafka",
    "kafka+ssl": "kafka",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "redis": "redis",
    "rediss": "redis",
    "redis+streams": "redis",
    "rediss+streams": "redis",
    "nats": "nats",
    "tls": "nats",
    "nats+tls": "nats",
    "nats+core": "nats",
    "nats+core+tls": "nats",
    "memory": "memory",
}


def messaging_system(url: str) -> str:
    """The ``messaging.system`` of a broker URL (``kafka://...`` -> ``"kafka"``)."""
    scheme = url.partition("://")[0].lower()
    return _SYSTEMS.get(scheme, scheme or "dispytch")


def _server(url: str) -> dict[str, Any]:
    """``server.address`` and ``server.port`` of the first host in ``url`` (never userinfo)."""
    try:
        netloc = urlsplit(url).netloc.rpartition("@")[2].split(",")[0]
        parts = urlsplit(f"//{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return {}
    out: dict[str, Any] = {}
    if host:
        out["server.address"] = host
    if port:
        out["server.port"] = port
    return out


class _Setter(Setter[dict[str, str]]):
    """Writes propagation fields into an outgoing message's ``headers`` dict."""

    def set(self, carrier: dict[str, str], key: str, value: str) -> None:
        carrier[key] = value


class _Getter(Getter[Mapping[str, str]]):
    """Reads propagation fields from a delivered message's headers (case as sent)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            for name, found in carrier.items():
                if name.lower() == key:
                    return [found]
            return None
        return [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_SETTER = _Setter()
_GETTER = _Getter()


class OpenTelemetryMiddleware(Middleware):
    """Traces emits (``PRODUCER`` spans) and handling (``CONSUMER`` spans continuing the
    emitter's trace) with the OpenTelemetry API.

    Args:
        tracer_provider: where spans go (default: the global one the SDK set up).
        propagator: how the context is written to and read from headers (default: the global
            one, W3C ``traceparent``/``tracestate`` plus baggage unless configured otherwise).
        system: ``messaging.system``; by default taken from the app's broker URL.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
        system: str | None = None,
    ) -> None:
        self.tracer = trace.get_tracer("dispytch", __version__, tracer_provider=tracer_provider)
        self._propagator = propagator
        self._system = system
        self._common: dict[str, Any] = {"messaging.system": system or "dispytch"}
        self._group: str | None = None

    @property
    def propagator(self) -> TextMapPropagator:
        return self._propagator or get_global_textmap()

    async def startup(self, app: App) -> None:
        url = app.backend.url
        self._common = {
            "messaging.system": self._system or messaging_system(url),
            **_server(url),
        }
        self._group = app.group

    # -- emitting -----------------------------------------------------------------------------

    async def publish(self, context: PublishContext, call_next: PublishNext) -> None:
        spans = []
        propagator = self.propagator
        for message in context.messages:
            template = type(message.event).__topic_template__
            pattern = template.template if template is not None else message.topic
            attributes = {
                **self._common,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": message.topic,
                "messaging.destination.template": pattern,
                "messaging.message.id": message.event.id,
                "messaging.message.body.size": len(message.payload),
                "dispytch.event.type": message.event.event_type(),
            }
            if context.batch:
                attributes["messaging.batch.message_count"] = len(context.messages)
            span = self.tracer.start_span(
                f"send {pattern}", kind=SpanKind.PRODUCER, attributes=attributes
            )
            propagator.inject(message.headers, trace.set_span_in_context(span), _SETTER)
            spans.append(span)
        try:
            await call_next(context)
        except BaseException as exc:
            errors: Sequence[BaseException | None] = context.errors or [exc] * len(spans)
            raise
        else:
            errors = context.errors or [None] * len(spans)
        finally:
            for span, error in zip(spans, errors, strict=False):
                if error is not None:
                    _fail(span, error)
                span.end()

    # -- handling -----------------------------------------------------------------------------

    async def consume(self, context: ConsumeContext, call_next: ConsumeNext) -> None:
        message = context.message
        parent = self.propagator.extract(message.headers, getter=_GETTER)
        attributes: dict[str, Any] = {
            **self._common,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": message.topic,
            "messaging.message.body.size": len(message.payload),
            "dispytch.delivery_attempt": message.delivery_attempt,
        }
        if self._group is not None:
            attributes["messaging.consumer.group.name"] = self._group
        if message.partition is not None:
            attributes["messaging.destination.partition.id"] = str(message.partition)
        span = self.tracer.start_span(
            "process", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            await call_next(context)
        except asyncio.CancelledError:  # shutdown: handed back, not a failure of the message
            raise
        except BaseException as exc:
            _fail(span, exc)
            raise
        finally:
            otel_context.detach(token)
            self._finish(span, context)

    def _finish(self, span: Span, context: ConsumeContext) -> None:
        # One set_attributes call: the SDK locks and checks each call.
        found: dict[str, AttributeValue] = {}
        patterns = context.patterns
        if patterns:
            span.update_name(f"process {patterns[0]}")
            found["messaging.destination.template"] = patterns[0]
            found["dispytch.handlers"] = ",".join(context.handlers)
        if context.event_id is not None:
            found["messaging.message.id"] = context.event_id
        if context.event_type is not None:
            found["dispytch.event.type"] = context.event_type
        if context.outcome is not None:
            found["dispytch.outcome"] = context.outcome
        span.set_attributes(found)
        for attempt in context.failed_attempts or ():
            details: dict[str, AttributeValue] = {
                "dispytch.handler": attempt.handler,
                "dispytch.attempt": attempt.attempt,
                "dispytch.retried": attempt.retried,
            }
            span.record_exception(attempt.error, details, timestamp=attempt.at)
            if attempt.retried:
                span.add_event(
                    "retry",
                    {**details, "error.type": type(attempt.error).__name__},
                    timestamp=attempt.at,
                )
        failure = context.failure
        if context.outcome == "dead_lettered" and failure is not None:
            span.add_event(
                "dead_letter",
                {
                    "dispytch.reason": failure.reason,
                    "dispytch.handler": failure.handler or "",
                    "dispytch.attempts": failure.attempts,
                    "error.type": failure.error_type,
                },
            )
            span.set_attribute("error.type", failure.error_type)
            span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {failure.reason}"))
        span.end()


def _fail(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_attribute("error.type", type(error).__name__)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
