"""PrometheusMiddleware: what it counts, its labels stay bounded, and TestClient beside it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dispytch import App, ConfigurationError, Event, EventBase, EventListener, HandlerGroup
from dispytch.prometheus import MAX_LAG_SERIES, PrometheusMiddleware, _bounded, _by_pattern
from dispytch.testing import TestClient
from tests.helpers import wait_until
from tests.unit.support import Body, Placed, envelope, running
from tests.unit.test_undecodable_chain import Feed, poisoned


class UserEvent(EventBase):
    __topic__ = "user:{user_id}:events"
    __event_type__ = "touched"
    user_id: str


def gated_app(
    topic: str = "orders", event: str = "placed", **options: Any
) -> tuple[App, CollectorRegistry, asyncio.Event, Callable[..., Any]]:
    """An app with metrics whose one handler waits for the returned gate."""
    registry = CollectorRegistry()
    app = App("memory://", middleware=[PrometheusMiddleware(registry)], **options)
    gate = asyncio.Event()

    @app.handler(topic=topic, event=event)
    async def held(event: Event[Body]) -> None:
        await gate.wait()

    return app, registry, gate, held


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the registry exposes, parsed back from the text format."""
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(registry).get((name, tuple(sorted(labels.items()))), 0.0)


def handler_labels(name: str, pattern: str, event_type: str) -> dict[str, str]:
    return {"handler": name, "pattern": pattern, "event_type": event_type}


async def test_counts_handled_failed_retried_dead_lettered_unhandled_and_emitted() -> None:
    registry = CollectorRegistry()
    app = App("memory://", middleware=[PrometheusMiddleware(registry)])
    calls: dict[int, int] = {}

    @app.handler(topic="orders", event="placed", retries=1, retry_interval=0)
    async def place(event: Event[Body]) -> None:
        n = event.body["n"]
        calls[n] = calls.get(n, 0) + 1
        if n == 1 and calls[n] == 1:
            raise ConnectionError("once")
        if n == 2:
            raise ValueError("always")

    async with TestClient(app) as client:
        labels = handler_labels(place.__qualname__, "orders", "placed")
        # bound at startup: the series exist at zero before the first message
        assert value(registry, "dispytch_handled_total", **labels) == 0.0
        assert ("dispytch_handled_total", tuple(sorted(labels.items()))) in samples(registry)
        for n in (0, 1, 2, 3):
            await client.emit(Placed(n=n))
        await client.publish_raw("orders", b"not json")
        await client.publish_raw("orders", envelope("unknown-type", {}))
        await client.wait_idle()
        assert value(registry, "dispytch_handled_total", **labels) == 3
        assert value(registry, "dispytch_handling_seconds_count", **labels) == 3
        assert value(registry, "dispytch_handling_seconds_bucket", le="+Inf", **labels) == 3
        assert value(registry, "dispytch_handling_seconds_sum", **labels) > 0
        failures = {**labels}
        assert (
            value(registry, "dispytch_handler_failures_total", error_type="ValueError", **failures)
            == 2
        )
        assert (
            value(
                registry,
                "dispytch_handler_failures_total",
                error_type="ConnectionError",
                **failures,
            )
            == 1
        )
        assert value(registry, "dispytch_retries_total", **labels) == 2
        assert (
            value(
                registry,
                "dispytch_dead_letters_total",
                handler=place.__qualname__,
                event_type="placed",
                reason="handler",
            )
            == 1
        )
        assert (
            value(
                registry, "dispytch_dead_letters_total", handler="", event_type="", reason="decode"
            )
            == 1
        )
        assert value(registry, "dispytch_unhandled_total") == 1
        assert value(registry, "dispytch_messages_received_total") == 6
        assert value(registry, "dispytch_messages_in_flight") == 0
        assert value(registry, "dispytch_emitted_total", pattern="orders", event_type="placed") == 4


async def test_in_flight_and_received_are_read_from_the_listener() -> None:
    app, registry, gate, place = gated_app()

    async with TestClient(app) as client:
        for n in range(3):
            await client.emit(Placed(n=n))
        await wait_until(lambda: value(registry, "dispytch_messages_in_flight") == 3, what="3 held")
        assert value(registry, "dispytch_messages_received_total") == 3
        assert (
            value(
                registry,
                "dispytch_handled_total",
                **handler_labels(place.__qualname__, "orders", "placed"),
            )
            == 0
        )
        gate.set()
        await client.wait_idle()
        assert value(registry, "dispytch_messages_in_flight") == 0
        assert value(registry, "dispytch_messages_received_total") == 3


async def test_labels_stay_bounded_over_a_thousand_rendered_topics() -> None:
    app, registry, gate, touched = gated_app(
        "user:{user_id}:events", "touched", health_interval=0.05
    )

    def series() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        return {key for key in samples(registry) if key[0].startswith("dispytch_")}

    async with TestClient(app) as client:
        before = series()
        await client.app.emit_many(UserEvent(user_id=str(i)) for i in range(1000))
        # a health check while 936 wait in 936 topics (64 are held): lag is per pattern
        lag = ("dispytch_consumer_lag", (("source", "user:{user_id}:events"),))
        await wait_until(lambda: samples(registry).get(lag) == 936, what="lag of 936")
        during = series()
        text = generate_latest(registry).decode()
        gate.set()
        await client.wait_idle()
        after = series()
    labels = handler_labels(touched.__qualname__, "user:{user_id}:events", "touched")
    assert value(registry, "dispytch_handled_total", **labels) == 1000
    assert (
        value(
            registry,
            "dispytch_emitted_total",
            pattern="user:{user_id}:events",
            event_type="touched",
        )
        == 1000
    )
    new = {
        lag,
        ("dispytch_broker_connected", ()),
        ("dispytch_last_progress_timestamp_seconds", ()),
        (
            "dispytch_emitted_total",
            (("event_type", "touched"), ("pattern", "user:{user_id}:events")),
        ),
    }
    assert during - before <= new and after - before <= new, (during | after) - before - new
    assert "user:999:events" not in text and "user:5:events" not in text


def test_lag_of_rendered_topics_is_summed_under_their_pattern_and_capped() -> None:
    import re

    patterns = [("user:{user_id}:events", re.compile(r"^user:(?P<user_id>[^:]+):events$"))]
    lag = {f"user:{i}:events": 1 for i in range(500)} | {"orders": 7, "billing-queue": 2}
    assert _by_pattern(lag, patterns) == {
        "user:{user_id}:events": 500,
        "orders": 7,
        "billing-queue": 2,
    }
    many = {f"q{i:04d}": 1 for i in range(MAX_LAG_SERIES + 50)}
    bounded = _bounded(many)
    assert len(bounded) == MAX_LAG_SERIES
    assert bounded[-1] == ("(other)", 51)


async def test_test_client_and_prometheus_middleware_together() -> None:
    registry = CollectorRegistry()
    app = App("memory://", middleware=[PrometheusMiddleware(registry)])

    @app.handler(topic="orders", event="placed")
    async def place(event: Event[Body]) -> None:
        if event.body["n"] < 0:
            raise ValueError("negative")

    for round_ in (1, 2):
        async with TestClient(app) as client:
            await client.emit(Placed(n=1))
            await client.emit(Placed(n=-1))
            await client.wait_idle()
            assert [e.body["n"] for e in client.handled_by(place)] == [1]
            assert len(client.failures) == 1
        # the same middleware keeps counting across app runs; the recorder is gone again
        labels = handler_labels(place.__qualname__, "orders", "placed")
        assert value(registry, "dispytch_handled_total", **labels) == round_
        assert app.middleware == [app.middleware[0]]


async def test_emit_errors_are_counted_by_type() -> None:
    registry = CollectorRegistry()
    app = App("memory://", middleware=[PrometheusMiddleware(registry)])

    class Refused(RuntimeError):
        pass

    async with TestClient(app) as client:
        producer = client.app.emitter.producer

        async def refuse(*args: Any, **kwargs: Any) -> None:
            raise Refused("no")

        producer.send = refuse  # type: ignore[method-assign]
        with pytest.raises(Refused):
            await client.emit(Placed(n=1))
    assert (
        value(
            registry,
            "dispytch_emit_errors_total",
            pattern="orders",
            event_type="placed",
            error_type="Refused",
        )
        == 1
    )
    assert value(registry, "dispytch_emitted_total", pattern="orders", event_type="placed") == 0


def test_a_second_middleware_on_the_same_registry_is_refused_with_the_fix() -> None:
    registry = CollectorRegistry()
    PrometheusMiddleware(registry)
    with pytest.raises(ConfigurationError, match="registry=CollectorRegistry"):
        PrometheusMiddleware(registry)
    PrometheusMiddleware(registry, namespace="other")  # another namespace is fine


def test_buckets_must_be_distinct() -> None:
    with pytest.raises(ConfigurationError, match="distinct"):
        PrometheusMiddleware(None, buckets=[0.1, 0.1])
    assert PrometheusMiddleware(None, buckets=[1, 0.5]).bounds == (0.5, 1.0, float("inf"))


async def test_connected_and_lag_come_from_the_health_checks() -> None:
    app, registry, gate, _ = gated_app(health_interval=0.05)

    async with TestClient(app) as client:
        for n in range(70):  # the listener holds 64 (its concurrency); 6 wait in the broker
            await client.emit(Placed(n=n))
        await wait_until(
            lambda: value(registry, "dispytch_consumer_lag", source="orders") == 6,
            what="lag 6",
        )
        assert value(registry, "dispytch_broker_connected") == 1
        gate.set()
        await client.wait_idle()
        await wait_until(
            lambda: ("dispytch_consumer_lag", (("source", "orders"),)) not in samples(registry),
            what="no lag left",
        )
        assert value(registry, "dispytch_last_progress_timestamp_seconds") > 0


async def test_broker_delayed_retries_count_as_retries_then_handled() -> None:
    registry = CollectorRegistry()
    app = App(
        "memory://",
        middleware=[PrometheusMiddleware(registry)],
        retry_mode="broker",
    )
    calls: list[int] = []

    @app.handler(topic="orders", event="placed", retries=2, retry_interval=0.01)
    async def place(event: Event[Body]) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")

    @app.handler(topic="orders", event="placed")
    async def audit(event: Event[Body]) -> None: ...

    async with TestClient(app) as client:
        await client.emit(Placed(n=1))
        await client.wait_idle()
        placed = handler_labels(place.__qualname__, "orders", "placed")
        audited = handler_labels(audit.__qualname__, "orders", "placed")
        assert len(calls) == 3
        assert value(registry, "dispytch_retries_total", **placed) == 2
        assert value(registry, "dispytch_handled_total", **placed) == 1
        assert value(registry, "dispytch_handled_total", **audited) == 1  # not run again


async def test_an_undecodable_delivery_is_counted_as_a_decode_dead_letter() -> None:
    """A delivery the adapter marked undecodable takes the listener's dead-letter chain; the
    ``after_consume`` hook alone (no consume scope) sees it and counts it once, reason decode."""
    registry = CollectorRegistry()
    consumer = Feed(poisoned())
    listener = EventListener(consumer, middleware=[PrometheusMiddleware(registry)])
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def placed(event: Event[Body]) -> None:
        raise AssertionError("an undecodable delivery reached a handler")

    listener.add_handler_group(group)
    async with running(listener):
        await wait_until(lambda: consumer.acked, what="the ack after the dead letter")
        dead = value(
            registry, "dispytch_dead_letters_total", handler="", event_type="", reason="decode"
        )
        assert dead == 1
        labels = handler_labels(placed.__qualname__, "orders", "placed")
        assert value(registry, "dispytch_handled_total", **labels) == 0
