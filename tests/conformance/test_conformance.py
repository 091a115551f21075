"""The delivery contract, the same on every backend."""

from __future__ import annotations

import asyncio
from typing import Annotated

import pytest
from pydantic import BaseModel

from dispytch import App, Event, EventBase, HandlerGroup, TopicSegment
from tests.conformance.conftest import BackendUnderTest
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(90)


class Order(BaseModel):
    order_id: int
    note: str = ""


def order_event(topic: str, event_type: str = "order_placed", **config: object) -> type[EventBase]:
    cfg = _key_config(config.get("partition_key")) if config else None

    class OrderPlaced(EventBase):
        __topic__ = topic
        __event_type__ = event_type
        __backend_config__ = cfg
        order_id: int
        note: str = ""

    return OrderPlaced


class _KeyConfig(BaseModel):
    partition_key: str


def _key_config(key: object) -> BaseModel | None:
    return None if key is None else _KeyConfig(partition_key=str(key))


async def _started(app: App) -> App:
    await app.start()
    return app


async def test_round_trip(make_app, topic: str) -> None:
    got: list[Event[Order]] = []
    app = make_app()

    @app.handler(topic=topic, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        got.append(event)

    await _started(app)
    OrderPlaced = order_event(topic)
    sent = OrderPlaced(order_id=1, note="hi")
    await app.emit(sent)
    await wait_until(lambda: len(got) == 1, what="the event")
    assert got[0].id == sent.id
    assert got[0].body == Order(order_id=1, note="hi")
    assert got[0].topic == topic
    assert got[0].type == "order_placed"
    assert got[0].timestamp > 0


async def test_thousand_events_in_order_for_one_key(
    make_app, topic: str, backend: BackendUnderTest
) -> None:
    got: list[int] = []
    # Brokers that carry no key (Redis Pub/Sub) keep order per channel instead.
    app = make_app(ordering="key" if backend.carries_keys else "partition", concurrency=32)

    @app.handler(topic=topic, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        if event.body.order_id % 7 == 0:
            await asyncio.sleep(0)  # let other work interleave; order must hold anyway
        got.append(event.body.order_id)

    await _started(app)
    OrderPlaced = order_event(topic, partition_key="customer-1")
    await app.emit_many(OrderPlaced(order_id=i) for i in range(1000))
    await wait_until(lambda: len(got) >= 1000, timeout=60, what="1000 events")
    assert got == list(range(1000))


async def test_dynamic_topic_with_typed_segments(
    make_app, uid: str, backend: BackendUnderTest
) -> None:
    d = backend.delimiter
    pattern = f"user{d}{{user_id}}{d}events_{uid}"
    got: list[tuple[int, str]] = []
    app = make_app()

    @app.handler(topic=pattern, event="user_seen")
    async def handle(event: Event[dict], user_id: Annotated[int, TopicSegment(gt=0)]) -> None:
        got.append((user_id, event.topic))

    class UserSeen(EventBase):
        __topic__ = pattern
        __event_type__ = "user_seen"
        user_id: int

    await _started(app)
    await app.emit(UserSeen(user_id=42))
    await wait_until(lambda: len(got) == 1, what="the dynamic-topic event")
    assert got == [(42, f"user{d}42{d}events_{uid}")]


async def test_emitted_headers_reach_the_handler(
    make_app, topic: str, backend: BackendUnderTest
) -> None:
    got: list[dict[str, str]] = []
    app = make_app()

    @app.handler(topic=topic, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        got.append(dict(event.headers))

    await _started(app)
    OrderPlaced = order_event(topic)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await app.emit(OrderPlaced(order_id=1), headers={"x-tenant": "t1", "traceparent": parent})
    await app.emit_many(
        [OrderPlaced(order_id=2), OrderPlaced(order_id=3)], headers={"x-tenant": "t2"}
    )
    await wait_until(lambda: len(got) == 3, what="three events")
    if not backend.carries_headers:  # Redis Pub/Sub: documented to carry none
        assert got == [{}, {}, {}]
        return
    assert sorted(str(h.get("x-tenant")) for h in got) == ["t1", "t2", "t2"]
    (first,) = [h for h in got if h.get("x-tenant") == "t1"]
    assert first["traceparent"] == parent


async def test_retries_then_success(make_app, topic: str) -> None:
    attempts: list[int] = []
    app = make_app()

    @app.handler(topic=topic, event="order_placed", retries=3, retry_interval=0.01)
    async def flaky(event: Event[Order]) -> None:
        attempts.append(event.body.order_id)
        if len(attempts) < 3:
            raise ConnectionError("transient")

    await _started(app)
    await app.emit(order_event(topic)(order_id=5))
    await wait_until(lambda: len(attempts) == 3, what="three attempts")
    await app.stop()  # drains: the third attempt has settled (acked) once stop returns
    assert attempts == [5, 5, 5]
    assert await app.backend.dead_letters(topic) == []


async def test_failure_goes_to_dead_letter_with_headers(make_app, topic: str) -> None:
    calls: list[int] = []
    app = make_app()

    @app.handler(topic=topic, event="order_placed", retries=2, retry_interval=0.01)
    async def broken(event: Event[Order]) -> None:
        calls.append(event.body.order_id)
        raise ValueError(f"cannot place order {event.body.order_id}")

    await _started(app)
    sent = order_event(topic)(order_id=9)
    await app.emit(sent)
    dead = await _dead_letters(app, topic, 1)
    assert calls == [9, 9, 9]
    assert dead[0].reason == "handler"
    assert dead[0].handler is not None and dead[0].handler.endswith("broken")
    assert dead[0].attempts == 3
    assert dead[0].error == "ValueError: cannot place order 9"
    assert dead[0].headers["x-dispytch-original-topic"] == topic
    assert sent.id.encode() in dead[0].payload  # the original bytes


async def test_undecodable_payload_dead_lettered_and_next_event_handled(
    make_app, topic: str
) -> None:
    got: list[int] = []
    app = make_app()

    @app.handler(topic=topic, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        got.append(event.body.order_id)

    await _started(app)
    await app.backend.producer().send(topic, b"\xff\x00 not an envelope")
    await app.emit(order_event(topic)(order_id=2))
    await wait_until(lambda: got == [2], what="the valid event after the bad one")
    dead = await _dead_letters(app, topic, 1)
    assert dead[0].reason == "decode"
    assert dead[0].payload == b"\xff\x00 not an envelope"


async def test_invalid_body_dead_lettered_without_retry(make_app, topic: str) -> None:
    calls: list[object] = []
    app = make_app()

    @app.handler(topic=topic, event="order_placed", retries=5, retry_interval=0.01)
    async def handle(event: Event[Order]) -> None:
        calls.append(event)

    class Wrong(EventBase):
        __topic__ = topic
        __event_type__ = "order_placed"
        order_id: str

    await _started(app)
    await app.emit(Wrong(order_id="not-a-number"))
    dead = await _dead_letters(app, topic, 1)
    assert dead[0].reason == "validation"
    assert dead[0].attempts == 1
    assert calls == []


async def test_unknown_event_type_is_skipped(make_app, topic: str) -> None:
    got: list[int] = []
    app = make_app()

    @app.handler(topic=topic, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        got.append(event.body.order_id)

    await _started(app)
    await app.emit(order_event(topic, "order_cancelled")(order_id=1))
    await app.emit(order_event(topic)(order_id=2))
    await wait_until(lambda: got == [2], what="the known event")
    assert await app.backend.dead_letters(topic) == []


async def test_several_handlers_for_one_event(make_app, topic: str) -> None:
    first: list[int] = []
    second: list[int] = []
    group = HandlerGroup(default_topic=topic, default_event="order_placed")

    @group.handler()
    async def one(event: Event[Order]) -> None:
        first.append(event.body.order_id)

    @group.handler()
    async def two(event: Event[dict]) -> None:
        second.append(event.body["order_id"])

    app = make_app()
    app.add_handler_group(group)
    await _started(app)
    await app.emit(order_event(topic)(order_id=3))
    await wait_until(lambda: first == [3] and second == [3], what="both handlers")


async def test_messagepack(make_app, topic: str) -> None:
    from dispytch.serialization.msgpack import MessagePackDeserializer, MessagePackSerializer

    got: list[Order] = []
    app = make_app(serializer=MessagePackSerializer(), deserializer=MessagePackDeserializer())

    @app.handler(topic=topic, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        got.append(event.body)

    await _started(app)
    await app.emit(order_event(topic)(order_id=8, note="packed"))
    await wait_until(lambda: got == [Order(order_id=8, note="packed")], what="msgpack event")


async def _dead_letters(app: App, topic: str, count: int):
    found: list = []

    async def poll() -> None:
        while True:
            found[:] = await app.backend.dead_letters(topic)
            if len(found) >= count:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), 20)
    return found


async def test_interop_consumes_bytes_a_0_10_service_produced(make_app, topic: str) -> None:
    got: list[Event[Order]] = []
    app = make_app()

    @app.handler(topic=topic, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        got.append(event)

    await _started(app)
    legacy = (
        b'{"id": "4f9d5c1e-0b1e-4c57-9a1b-6d2f0c1e2a3b", "type": "order_placed", '
        b'"body": {"order_id": 11, "note": "from 0.10"}, "timestamp": 1700000000000}'
    )
    await app.backend.producer().send(topic, legacy)
    await wait_until(lambda: len(got) == 1, what="the 0.10 event")
    assert got[0].id == "4f9d5c1e-0b1e-4c57-9a1b-6d2f0c1e2a3b"
    assert got[0].body == Order(order_id=11, note="from 0.10")
    assert got[0].timestamp == 1700000000000


async def test_interop_emitted_bytes_are_the_0_10_envelope(make_app, topic: str) -> None:
    """A 0.10 consumer json-decodes the body and reads id/type/body/timestamp: check exactly
    those bytes arrive, by dead-lettering them and reading back the original payload."""
    app = make_app()

    @app.handler(topic=topic, event="order_placed")
    async def reject(event: Event[Order]) -> None:
        raise RuntimeError("park it so the original bytes can be read back")

    await _started(app)
    sent = order_event(topic)(order_id=12, note="to 0.10")
    await app.emit(sent)
    (dead,) = await _dead_letters(app, topic, 1)
    prefix = f'{{"id": "{sent.id}", "type": "order_placed", '.encode()
    assert dead.payload.startswith(prefix)
    assert b'"body": {"order_id": 12, "note": "to 0.10"}, "timestamp": ' in dead.payload
