"""Prometheus metrics for an app (``pip install "dispytch[prometheus]"``).

.. code-block:: python

    from dispytch import App
    from dispytch.prometheus import PrometheusMiddleware

    app = App("kafka://localhost:9092", group="billing", middleware=[PrometheusMiddleware()])

``dispytch run billing.service:app --http 0.0.0.0:9000`` then serves them at ``/metrics``
(or expose the registry yourself, e.g. ``prometheus_client.start_http_server``).

Every label value comes from the code, never from the wire: a handler's name, its topic
*pattern* as registered (``user:{user_id}:events``, not the rendered topic) and its event type;
an emitted event's class gives the pattern and type of an emit. A message no handler matched
is counted without its (untrusted) event type.

The per-message path only adds to plain integers kept per handler, through the synchronous
``after_consume`` and ``after_publish`` hooks (no coroutine, no lock, no label lookup); the
collector turns them into metric families when Prometheus scrapes. In-flight messages, received
messages, consumer lag and broker connectivity are read at scrape time from the app's listener
and :meth:`~dispytch.app.App.health`.
"""

from __future__ import annotations

import logging
import math
import re
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from dispytch.errors import MissingExtraError

    raise MissingExtraError("prometheus", "prometheus_client") from exc

from dispytch.errors import ConfigurationError
from dispytch.middleware import ConsumeContext, Middleware, PublishContext

if TYPE_CHECKING:
    from dispytch.app import App
    from dispytch.listener.pipeline import Route

__all__ = ["DEFAULT_BUCKETS", "PrometheusMiddleware"]

logger = logging.getLogger("dispytch.prometheus")

#: Upper bounds (seconds) of the handling-duration histogram's buckets.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: Most lag series exported (one per topic, stream or queue); the rest are summed in one.
MAX_LAG_SERIES = 200
#: Event classes remembered for emit counters before the memo resets (labels stay bounded by
#: the distinct patterns and types anyway; this bounds classes made on the fly).
_MAX_EVENT_CLASSES = 1024


class _HandlerStats:
    """What one handler's route counted: plain integers, added to on the event loop.

    A message all of whose handlers succeeded lands in one of ``buckets``; ``handled`` counts
    only the rest (a handler that succeeded beside one that failed), so the handled total is
    ``handled + sum(buckets)``: one addition less per message."""

    __slots__ = ("buckets", "failures", "handled", "labels", "retries", "sum")

    def __init__(self, labels: tuple[str, str, str], buckets: int) -> None:
        self.labels = labels  # handler, pattern, event_type
        self.handled = 0
        self.retries = 0
        self.failures: dict[str, int] = {}
        self.buckets = [0] * buckets
        self.sum = 0.0


class _EmitStats:
    __slots__ = ("emitted", "errors", "labels")

    def __init__(self, labels: tuple[str, str]) -> None:
        self.labels = labels  # pattern, event_type
        self.emitted = 0
        self.errors: dict[str, int] = {}


class PrometheusMiddleware(Middleware):
    """Counts what an app receives, handles, retries, dead-letters and emits, times handling,
    and exports it, with in-flight messages, consumer lag and broker connectivity, to
    ``registry`` (default: ``prometheus_client``'s global one).

    Args:
        registry: where the metrics are registered (a ``CollectorRegistry``).
        namespace: prefix of every metric name.
        buckets: upper bounds (seconds) of the ``*_handling_seconds`` histogram's buckets.

    One instance serves one app. A second instance on the same registry would export the same
    names twice: give it a registry of its own (``registry=CollectorRegistry()``).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        namespace: str = "dispytch",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ConfigurationError(f"buckets must be distinct seconds, got {list(buckets)!r}")
        self.namespace = namespace
        self.bounds: tuple[float, ...] = (*bounds, math.inf)
        self.registry = registry
        self.app: App | None = None
        self._handlers: dict[Route, _HandlerStats] = {}
        self._by_labels: dict[tuple[str, str, str], _HandlerStats] = {}
        self._emits: dict[type[Any], _EmitStats] = {}
        self._emits_by_labels: dict[tuple[str, str], _EmitStats] = {}
        # (handler or "", event_type or "", reason) -> count
        self._dead_letters: dict[tuple[str, str, str], int] = {}
        self._handed_back: dict[str, int] = {}
        self._no_handler = 0
        #: the non-literal subscription patterns: lag of a topic they match is summed under them
        self._patterns: list[tuple[str, re.Pattern[str]]] = []
        self._collector = _Collector(self)
        if registry is not None:
            try:
                registry.register(self._collector)
            except ValueError as exc:
                raise ConfigurationError(
                    f"{exc}: another PrometheusMiddleware already exports these metrics on this "
                    "registry; give this one its own, PrometheusMiddleware("
                    "registry=CollectorRegistry()), or a different namespace"
                ) from None

    # -- app life -----------------------------------------------------------------------------

    async def startup(self, app: App) -> None:
        """Bind to ``app``: every handler's series exists (at zero) from the first scrape."""
        self.app = app
        listener = app.listener
        if listener is not None:
            for route in listener.handler_routes():
                self._bind(route)
                self._handed_back.setdefault(route.event_type, 0)
            self._patterns = [
                (p.raw, re.compile(p.regex))
                for p in listener.routes().patterns()
                if not p.is_literal
            ]
            app.health()  # starts the broker checks that give lag and connectivity

    async def shutdown(self, app: App) -> None:
        if self.app is app:
            self.app = None

    # -- recording (on the event loop, per message) -------------------------------------------

    def after_consume(self, context: ConsumeContext) -> None:
        if context.outcome == "handled":
            duration: float = context.duration  # type: ignore[assignment]  # set once settled
            index = bisect_left(self.bounds, duration)
            handlers = self._handlers
            for route, _ in context._matches:
                stats = handlers.get(route) or self._bind(route)
                stats.buckets[index] += 1
                stats.sum += duration
            if context.failed_attempts is None:
                return
        self._settled_otherwise(context)

    def _settled_otherwise(self, context: ConsumeContext) -> None:
        """Every outcome but a clean ``handled`` (the rare path)."""
        failed: set[str] = set()
        retried: set[str] = set()
        for attempt in context.failed_attempts or ():
            stats = self._handlers.get(attempt._route) or self._bind(attempt._route)
            kind = type(attempt.error).__name__
            stats.failures[kind] = stats.failures.get(kind, 0) + 1
            if attempt.retried:
                stats.retries += 1
                if attempt._route.broker_retry:  # retried on a later delivery
                    retried.add(stats.labels[0])
            else:
                failed.add(stats.labels[0])
        outcome = context.outcome
        matches = context._matches
        event_type = matches[0][0].event_type if matches else ""
        if outcome == "handled":
            pass  # counted by after_consume; only its failed attempts were left
        elif outcome == "no_handler":
            self._no_handler += 1
        elif outcome == "dead_lettered":
            self._dead_letter(context, event_type)
            if context.failure is not None and context.failure.reason == "handler":
                self._others_handled(matches, failed)
        elif outcome == "retried":
            # Broker-delayed retries: the failed handlers run again on a later delivery (their
            # attempts are counted above); the others succeeded on this one.
            if context.failure is not None:
                self._dead_letter(context, event_type)
            self._others_handled(matches, failed | retried)
        elif outcome == "handed_back":
            self._handed_back[event_type] = self._handed_back.get(event_type, 0) + 1

    def _dead_letter(self, context: ConsumeContext, event_type: str) -> None:
        failure = context.failure
        reason = failure.reason if failure is not None else "unknown"
        handler = (failure.handler if failure is not None else None) or ""
        key = (handler, event_type, reason)
        self._dead_letters[key] = self._dead_letters.get(key, 0) + 1

    def _others_handled(self, matches: Sequence[tuple[Route, Any]], failed: set[str]) -> None:
        """The handlers of a message that went to several, other than ``failed``, succeeded."""
        for route, _ in matches:
            stats = self._handlers.get(route) or self._bind(route)
            if stats.labels[0] not in failed:
                stats.handled += 1

    def after_publish(self, context: PublishContext) -> None:
        errors = context.errors
        emits = self._emits
        for i, message in enumerate(context.messages):
            cls = type(message.event)
            stats = emits.get(cls) or self._bind_event(cls)
            error = errors[i] if errors is not None and i < len(errors) else None
            if errors is None:
                error = _NOT_SENT
            if error is None:
                stats.emitted += 1
            else:
                kind = type(error).__name__
                stats.errors[kind] = stats.errors.get(kind, 0) + 1

    # -- label sets, made once per handler and per event class --------------------------------

    def _bind(self, route: Route) -> _HandlerStats:
        labels = (route.name, route.pattern, route.event_type)
        stats = self._by_labels.get(labels)
        if stats is None:
            stats = self._by_labels[labels] = _HandlerStats(labels, len(self.bounds))
        self._handlers[route] = stats
        return stats

    def _bind_event(self, cls: type[Any]) -> _EmitStats:
        template = getattr(cls, "__topic_template__", None)
        labels = (
            template.template if template is not None else "",
            str(getattr(cls, "__event_type__", "")),
        )
        stats = self._emits_by_labels.get(labels)
        if stats is None:
            stats = self._emits_by_labels[labels] = _EmitStats(labels)
        if len(self._emits) >= _MAX_EVENT_CLASSES:
            self._emits.clear()
        self._emits[cls] = stats
        return stats


class _NotSent(Exception):
    """Stands for the error of an emit whose publish scope raised before sending."""


_NOT_SENT = _NotSent()


class _Collector:
    """Turns the middleware's counts into metric families when the registry is scraped.

    May run on another thread (``prometheus_client.start_http_server``): it only reads, and
    copies each dict before walking it.
    """

    def __init__(self, middleware: PrometheusMiddleware) -> None:
        self.m = middleware

    def describe(self) -> list[Metric]:
        return list(self._families(values=False))

    def collect(self) -> Iterator[Metric]:
        return self._families(values=True)

    def _families(self, *, values: bool) -> Iterator[Metric]:
        m = self.m
        ns = m.namespace
        handler_labels = ["handler", "pattern", "event_type"]
        stats = list(m._by_labels.values()) if values else []

        received = CounterMetricFamily(
            f"{ns}_messages_received",
            "Messages the listener took from the broker.",
        )
        in_flight = GaugeMetricFamily(
            f"{ns}_messages_in_flight", "Messages taken from the broker and not yet settled."
        )
        app = m.app if values else None
        listener = app.listener if app is not None else None
        if values:
            held = listener.in_flight if listener is not None else 0
            received.add_metric([], (listener.settled if listener is not None else 0) + held)
            in_flight.add_metric([], held)
        yield received
        yield in_flight

        handled = CounterMetricFamily(
            f"{ns}_handled",
            "Messages a handler handled successfully.",
            labels=handler_labels,
        )
        retries = CounterMetricFamily(
            f"{ns}_retries",
            "Handler attempts that failed and were retried.",
            labels=handler_labels,
        )
        failures = CounterMetricFamily(
            f"{ns}_handler_failures",
            "Handler attempts that raised, by exception type.",
            labels=[*handler_labels, "error_type"],
        )
        duration = HistogramMetricFamily(
            f"{ns}_handling_seconds",
            "Seconds from the listener taking a message to settling it, per handler, for "
            "messages all of whose handlers succeeded.",
            labels=handler_labels,
        )
        for s in stats:
            labels = list(s.labels)
            counts = list(s.buckets)
            handled.add_metric(labels, s.handled + sum(counts))
            retries.add_metric(labels, s.retries)
            for kind, count in list(s.failures.items()):
                failures.add_metric([*labels, kind], count)
            cumulative, buckets = 0, []
            for bound, count in zip(m.bounds, counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            duration.add_metric(labels, buckets, s.sum)
        yield handled
        yield failures
        yield retries
        yield duration

        dead = CounterMetricFamily(
            f"{ns}_dead_letters",
            "Messages dead-lettered, by the handler that failed ('' when none ran) and reason.",
            labels=["handler", "event_type", "reason"],
        )
        for (handler, event_type, reason), count in list(m._dead_letters.items()):
            dead.add_metric([handler, event_type, reason], count)
        yield dead
        handed_back = CounterMetricFamily(
            f"{ns}_handed_back",
            "Messages handed back to the broker unacknowledged (shutdown, lost connection).",
            labels=["event_type"],
        )
        for event_type, count in list(m._handed_back.items()):
            handed_back.add_metric([event_type], count)
        yield handed_back
        no_handler = CounterMetricFamily(
            f"{ns}_unhandled", "Messages acknowledged because no handler matched their type."
        )
        if values:
            no_handler.add_metric([], m._no_handler)
        yield no_handler

        emitted = CounterMetricFamily(
            f"{ns}_emitted",
            "Events the broker confirmed.",
            labels=["pattern", "event_type"],
        )
        emit_errors = CounterMetricFamily(
            f"{ns}_emit_errors",
            "Events whose emit failed, by exception type.",
            labels=["pattern", "event_type", "error_type"],
        )
        for e in list(m._emits_by_labels.values()) if values else []:
            emitted.add_metric(list(e.labels), e.emitted)
            for kind, count in list(e.errors.items()):
                emit_errors.add_metric([*e.labels, kind], count)
        yield emitted
        yield emit_errors

        lag = GaugeMetricFamily(
            f"{ns}_consumer_lag",
            "Messages waiting in the broker for this consumer group, per topic, stream or "
            "queue (as of the last health check).",
            labels=["source"],
        )
        connected = GaugeMetricFamily(
            f"{ns}_broker_connected",
            "1 when the broker answered the last health check, 0 when it did not.",
        )
        progress = GaugeMetricFamily(
            f"{ns}_last_progress_timestamp_seconds",
            "Unix time the listener was last seen settling a message.",
        )
        health = app.health() if app is not None and listener is not None else None
        if health is not None:
            for source, count in _bounded(_by_pattern(health.lag, m._patterns)):
                lag.add_metric([source], count)
            if health.connected is not None:
                connected.add_metric([], 1.0 if health.connected else 0.0)
            if health.last_progress is not None:
                progress.add_metric([], health.last_progress)
        yield lag
        yield connected
        yield progress


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def _by_pattern(
    lag: Mapping[str, int] | None, patterns: Sequence[tuple[str, re.Pattern[str]]]
) -> dict[str, int]:
    """Lag per source, topics that a handler pattern matches summed under that pattern (a
    label never holds a rendered topic); queues, streams and literal topics as they are."""
    out: dict[str, int] = {}
    for source, count in (lag or {}).items():
        key = next((raw for raw, regex in patterns if regex.match(source)), source)
        out[key] = out.get(key, 0) + count
    return out


def _bounded(lag: Mapping[str, int]) -> list[tuple[str, int]]:
    """At most :data:`MAX_LAG_SERIES` series; the rest summed under ``"(other)"``."""
    if not lag:
        return []
    items = sorted(lag.items())
    if len(items) <= MAX_LAG_SERIES:
        return items
    kept = items[: MAX_LAG_SERIES - 1]
    return [*kept, ("(other)", sum(count for _, count in items[MAX_LAG_SERIES - 1 :]))]
