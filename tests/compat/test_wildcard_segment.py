"""Issue 11 item 4: a literal ``*`` segment in a handler topic matches any one segment and binds
no parameter, as in Dispytch 0.10; every backend subscribes to it correctly."""

from __future__ import annotations

import re
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from dispytch import (
    App,
    Event,
    EventBase,
    HandlerGroup,
    RegistrationError,
    TopicSegment,
)
from dispytch.routing import RouteTable, TopicPattern
from tests.conformance.conftest import BackendUnderTest
from tests.helpers import wait_until
from tests.unit.support import deliver, envelope


class Shipped(BaseModel):
    order_id: int


# -- the pattern ---------------------------------------------------------------------------------


def test_a_star_segment_is_a_pattern_without_parameters() -> None:
    pattern = TopicPattern.parse("orders.*.shipped", ".")
    assert not pattern.is_literal
    assert pattern.segments == ()
    regex = re.compile(pattern.regex)
    match = regex.match("orders.eu.shipped")
    assert match is not None and match.groupdict() == {}
    assert regex.match("orders.eu.west.shipped") is None  # exactly one segment
    assert regex.match("orders..shipped") is None  # not an empty one
    assert regex.match("orders.eu.shipped.late") is None


def test_star_only_counts_as_a_whole_segment() -> None:
    pattern = TopicPattern.parse("orders.eu*.shipped", ".")
    assert pattern.is_literal
    assert re.compile(pattern.regex).match("orders.eu-west.shipped") is None


def test_star_and_placeholders_together() -> None:
    pattern = TopicPattern.parse("tenant.{tenant}.*.events", ".")
    assert pattern.segments == ("tenant",)
    match = re.compile(pattern.regex).match("tenant.acme.billing.events")
    assert match is not None and match.groupdict() == {"tenant": "acme"}
    assert pattern.glob == "tenant.*.*.events"


def test_route_table_binds_nothing_for_a_star() -> None:
    table: RouteTable[str] = RouteTable()
    table.add(TopicPattern.parse("orders.*.shipped", "."), "shipped", "any-region")
    assert table.lookup("orders.eu.shipped", "shipped") == [("any-region", {})]
    assert table.lookup("orders.eu.x.shipped", "shipped") == []


# -- what each backend subscribes to ---------------------------------------------------------------


def test_glob_for_amqp_bindings_and_nats_subjects() -> None:
    assert TopicPattern.parse("orders.*.shipped", ".").glob == "orders.*.shipped"
    assert TopicPattern.parse("*.shipped", ".").glob == "*.shipped"


def test_redis_glob_keeps_the_star_a_wildcard() -> None:
    pytest.importorskip("redis")
    from dispytch.redis.topics import PatternMatcher, subscription_glob

    pattern = TopicPattern.parse("orders:*:shipped", ":")
    assert subscription_glob(pattern) == "orders:*:shipped"
    # Literal text is still escaped: only whole '*' segments are wildcards.
    assert subscription_glob(TopicPattern.parse("a[1]:*:b?", ":")) == "a\\[1\\]:*:b\\?"
    matcher = PatternMatcher(pattern)
    assert matcher("orders:eu:shipped")
    assert not matcher("orders:eu:west:shipped")


def test_kafka_regex_subscription() -> None:
    pytest.importorskip("aiokafka")
    from dispytch.kafka.subscription import subscription_for

    sub = subscription_for([TopicPattern.parse("orders.*.shipped", "."), TopicPattern.parse("x")])
    assert sub.pattern is not None
    regex = re.compile(sub.pattern)
    assert regex.match("orders.eu.shipped")
    assert regex.match("x")
    assert not regex.match("orders.eu.west.shipped")


# -- as a 0.10 user wires it ----------------------------------------------------------------------


async def test_seed_style_listener_with_a_star_topic() -> None:
    got: list[tuple[str, int]] = []
    orders = HandlerGroup()

    @orders.handler(topic="orders.*.shipped", event="order_shipped")
    async def on_shipped(event: Event[Shipped]) -> None:
        got.append((event.topic, event.body.order_id))

    topics = ["orders.eu.shipped", "orders.eu.west.shipped", "orders.us.shipped"]
    consumer = await deliver(
        orders,
        [(t, envelope("order_shipped", {"order_id": n})) for n, t in enumerate(topics, 1)],
        settled=2,
        topic_delimiter=".",
    )
    assert got == [("orders.eu.shipped", 1), ("orders.us.shipped", 3)]
    # The two-segment topic was never fetched: the subscription itself is one segment wide.
    assert consumer.fetched == 2


def test_a_segment_parameter_cannot_bind_a_star() -> None:
    orders = HandlerGroup()
    with pytest.raises(RegistrationError, match="no such placeholder"):

        @orders.handler(topic="orders.*.shipped", event="order_shipped")
        async def on_shipped(region: Annotated[str, TopicSegment()]) -> None: ...


# -- on every backend ------------------------------------------------------------------------------


async def test_star_topic_on_every_backend(
    make_app: Any, uid: str, backend: BackendUnderTest
) -> None:
    d = backend.delimiter
    got: list[tuple[str, int]] = []
    app: App = make_app()

    @app.handler(topic=f"orders_{uid}{d}*{d}shipped", event="order_shipped")
    async def on_shipped(event: Event[Shipped]) -> None:
        got.append((event.topic, event.body.order_id))

    class OrderShipped(EventBase):
        __topic__ = f"orders_{uid}{d}{{region}}{d}shipped"
        __event_type__ = "order_shipped"
        region: str
        order_id: int

    await app.start()
    await app.emit(OrderShipped(region="eu", order_id=1))
    await app.emit(OrderShipped(region="us", order_id=2))
    await wait_until(lambda: len(got) == 2, timeout=30, what="both events")
    assert sorted(got) == [
        (f"orders_{uid}{d}eu{d}shipped", 1),
        (f"orders_{uid}{d}us{d}shipped", 2),
    ]
