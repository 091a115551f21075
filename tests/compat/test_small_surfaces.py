"""Issue 11 item 7: the smaller 0.10 surfaces — ``Message.id``, ``Event`` as a dataclass, the
``TypeError`` of a handler without topic, and custom deserializers returning ``MessagePayload``."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any
from unittest.mock import create_autospec

import pytest
from pydantic import BaseModel

from dispytch import (
    App,
    Dependency,
    Event,
    EventBase,
    EventEmitter,
    EventListener,
    HandlerGroup,
    RegistrationError,
    TopicSegment,
)
from dispytch.di.context import EventHandlerContext
from dispytch.errors import InvalidTopicError
from dispytch.listener.consumer import Consumer, Failure, Message
from dispytch.memory import MemoryBroker
from dispytch.serialization.deserializer import Deserializer, MessagePayload
from dispytch.serialization.errors import DeserializationError, FieldMissingError
from tests.conformance.conftest import BackendUnderTest
from tests.helpers import wait_until
from tests.unit.support import RecordingConsumer, deliver, envelope, running

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class Payment(BaseModel):
    amount: int


# -- Message.id -----------------------------------------------------------------------------------


class QueueConsumer(Consumer):
    """A consumer as a 0.10 user wrote one: its messages are keyed by ``Message.id`` until
    acked (0.10's own consumers did exactly this)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._waiting_for_ack: dict[Any, bytes] = {}
        self.acked: list[bytes] = []

    async def listen(self) -> AsyncIterator[Message]:
        while True:
            topic, payload = await self.queue.get()
            message = Message(topic=topic, payload=payload)
            self._waiting_for_ack[message.id] = payload
            yield message

    async def ack(self, message: Message) -> None:
        self.acked.append(self._waiting_for_ack.pop(message.id))


async def test_a_0_10_consumer_keyed_by_message_id_acks_the_right_messages() -> None:
    paid: list[int] = []
    payments = HandlerGroup()

    @payments.handler(topic="payments", event="payment_made")
    async def on_payment(event: Event[Payment]) -> None:
        if event.body.amount % 2:
            await asyncio.sleep(0.01)  # finish out of order
        paid.append(event.body.amount)

    consumer = QueueConsumer()
    listener = EventListener(consumer)
    listener.add_handler_group(payments)
    sent = [envelope("payment_made", {"amount": n}, id_=f"p{n}") for n in range(20)]
    async with running(listener):
        for payload in sent:
            consumer.queue.put_nowait(("payments", payload))
        await wait_until(lambda: len(consumer.acked) == 20, timeout=5, what="20 acks")
    assert sorted(paid) == list(range(20))
    assert sorted(consumer.acked) == sorted(sent)
    assert consumer._waiting_for_ack == {}


def test_message_id_is_made_once_per_message_when_the_broker_gives_none() -> None:
    first, second = Message("t", b"x"), Message("t", b"x")
    assert UUID.match(first.id)
    assert first.id == first.id
    assert first.id != second.id
    assert Message("t", b"x", message_id="1700000000000-0").id == "1700000000000-0"


async def test_message_id_on_every_backend(
    make_app: Any, topic: str, backend: BackendUnderTest
) -> None:
    """The broker's id where it has one: the Redis Streams entry id, RabbitMQ's message_id
    property, JetStream's Nats-Msg-Id; elsewhere a UUID made when first read."""
    seen: list[tuple[str | None, Message]] = []

    class Watch:
        def on_handled(self, handler: str, event: Event[Any]) -> None: ...

        def on_dead_letter(self, message: Message, failure: Failure) -> None:
            seen.append((message.message_id, message))

    app: App = make_app()
    app.observer = Watch()

    @app.handler(topic=topic, event="payment_made")
    async def park(event: Event[Payment]) -> None:
        raise RuntimeError("dead-letter it, so the observer sees the message")

    await app.start()
    config: BaseModel | None = None
    if backend.name == "nats":
        from dispytch.nats import NATSEventConfig

        config = NATSEventConfig(msg_id=f"payment-{topic}")
    producer = app.backend.producer()
    for n in range(2):
        body = envelope("payment_made", {"amount": n}, id_=f"{topic}-{n}")
        await producer.send(topic, body, config if n == 0 else None)
    await wait_until(lambda: len(seen) == 2, timeout=20, what="two dead letters")
    ids = [message.id for _, message in seen]
    assert len(set(ids)) == 2
    from_broker = [given for given, _ in seen]
    if backend.name == "redis_streams":
        assert all(re.match(r"^\d+-\d+$", i) for i in ids)
        assert from_broker == ids
    elif backend.name == "rabbitmq":
        assert all(from_broker), from_broker
    elif backend.name == "nats":
        assert from_broker == [f"payment-{topic}", None]
        assert UUID.match(ids[1])
    else:
        assert from_broker == [None, None]
        assert all(UUID.match(i) for i in ids)


# -- Event ----------------------------------------------------------------------------------------


def test_events_compare_by_value() -> None:
    one = Event(id="e1", type="payment_made", topic="payments", body=Payment(amount=3), timestamp=5)
    same = Event(
        id="e1", type="payment_made", topic="payments", body=Payment(amount=3), timestamp=5
    )
    other = dataclasses.replace(one, body=Payment(amount=4))
    assert one == same
    assert one != other
    assert one != "e1"


def test_events_work_with_dataclasses_asdict() -> None:
    event = Event(id="e1", type="payment_made", topic="payments", body={"amount": 3}, timestamp=5)
    assert dataclasses.is_dataclass(event)
    assert dataclasses.asdict(event) == {
        "id": "e1",
        "type": "payment_made",
        "topic": "payments",
        "body": {"amount": 3},
        "timestamp": 5,
    }
    assert [f.name for f in dataclasses.fields(event)] == [
        "id",
        "type",
        "topic",
        "body",
        "timestamp",
    ]


async def test_a_handler_can_compare_the_event_it_got() -> None:
    got: list[Event[Payment]] = []
    payments = HandlerGroup()

    @payments.handler(topic="payments", event="payment_made")
    async def on_payment(event: Event[Payment]) -> None:
        got.append(event)

    payload = envelope("payment_made", {"amount": 7}, id_="e7", timestamp=9)
    await deliver(payments, [("payments", payload)])
    assert got == [
        Event(id="e7", type="payment_made", topic="payments", body=Payment(amount=7), timestamp=9)
    ]


# -- no topic -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "kwargs"),
    [
        (HandlerGroup(), {"event": "payment_made"}),
        (HandlerGroup(), {"topic": "payments"}),
        (HandlerGroup(default_event="payment_made"), {}),
        (HandlerGroup(default_topic="payments"), {}),
    ],
    ids=["no topic", "no event", "default event only", "default topic only"],
)
def test_a_handler_without_topic_or_event_is_a_type_error(
    group: HandlerGroup, kwargs: dict[str, str]
) -> None:
    with pytest.raises(TypeError, match=r"pass (topic|event)=") as raised:
        group.handler(**kwargs)  # 0.10 raised here, before decorating anything
    assert isinstance(raised.value, RegistrationError)
    assert group.handlers == []


def test_the_listener_handler_without_topic_is_a_type_error() -> None:
    listener = EventListener(RecordingConsumer(MemoryBroker()))
    with pytest.raises(TypeError):

        @listener.handler(event="payment_made")
        async def on_payment(event: Event[Payment]) -> None: ...


def current_user(ctx: EventHandlerContext) -> int:
    """A 0.10 dependency that took the handler context."""
    return int(ctx.event.body["user_id"])


def test_event_handler_context_is_importable_and_says_what_to_use_instead() -> None:
    payments = HandlerGroup()
    with pytest.raises(RegistrationError, match=r"EventHandlerContext.*event: Event\[Model\]"):

        @payments.handler(topic="payments", event="payment_made")
        async def on_payment(user: Annotated[int, Dependency(current_user)]) -> None: ...


# -- custom deserializers -------------------------------------------------------------------------


class LegacyJSON(Deserializer):
    """A custom deserializer as a 0.10 user wrote one."""

    def deserialize(self, payload: bytes) -> MessagePayload:
        data = json.loads(payload)
        if "type" not in data:
            raise FieldMissingError("type")
        if data.get("id") == "broken":
            raise DeserializationError("cannot read this one")
        return MessagePayload(**data)


async def test_a_0_10_deserializer_returning_message_payload() -> None:
    got: list[Event[Payment]] = []
    payments = HandlerGroup()

    @payments.handler(topic="payments", event="payment_made")
    async def on_payment(event: Event[Payment]) -> None:
        got.append(event)

    bad = [
        b'{"id": "a", "body": {}}',  # FieldMissingError
        b'{"id": "broken", "type": "payment_made", "body": {}, "timestamp": 1}',
        b'{"id": "b", "type": "payment_made", "body": [1], "timestamp": 1}',  # body not a dict
        b'{"id": "c", "type": "payment_made", "body": {}, "timestamp": "soon"}',
    ]
    good = (
        b'{"id": "e1", "type": "payment_made", "body": {"amount": 5}, "timestamp": 2.0, '
        b'"producer": "ignored, as 0.10 ignored unknown keys"}'
    )
    consumer = await deliver(
        payments, [("payments", payload) for payload in [*bad, good]], deserializer=LegacyJSON()
    )
    assert [(e.id, e.body, e.timestamp) for e in got] == [("e1", Payment(amount=5), 2)]
    assert [(f.reason, f.error_type) for _, f in consumer.dead] == [("decode", "DecodeError")] * 4


class OwnPayload(BaseModel):
    """A 0.10 user's own model of the envelope (0.10's listener only called model_dump())."""

    id: str
    type: str
    body: Any = None
    timestamp: int = 0


class ShapeDeserializer(Deserializer):
    """Returns the 0.10 shape as a pydantic model, or as a plain dict for ``"as": "dict"``."""

    def deserialize(self, payload: bytes) -> Any:
        data = json.loads(payload)
        return data if data.pop("as", None) == "dict" else OwnPayload(**data)


async def test_a_deserializer_returning_its_own_model_or_a_dict() -> None:
    got: list[tuple[str, int]] = []
    payments = HandlerGroup()

    @payments.handler(topic="payments", event="payment_made")
    async def on_payment(event: Event[Payment]) -> None:
        got.append((event.id, event.body.amount))

    payloads = [
        b'{"id": "m", "type": "payment_made", "body": {"amount": 1}, "timestamp": 1}',
        b'{"as": "dict", "id": "d", "type": "payment_made", "body": {"amount": 2}}',
        # Shapes the pipeline could not use: a decode failure each, never a redelivery loop.
        b'{"id": "no-body", "type": "payment_made"}',
        b'{"as": "dict", "id": "list-body", "type": "payment_made", "body": [1]}',
    ]
    consumer = await deliver(
        payments, [("payments", p) for p in payloads], deserializer=ShapeDeserializer()
    )
    assert got == [("m", 1), ("d", 2)]
    assert [(f.reason, f.error_type) for _, f in consumer.dead] == [("decode", "DecodeError")] * 2
    assert consumer.nacked == []


def test_message_payload_is_an_envelope_with_0_10_construction() -> None:
    payload = MessagePayload(id="e1", type="payment_made", body={"amount": 1}, timestamp=3)
    assert (payload.id, payload.type, payload.body, payload.timestamp) == (
        "e1",
        "payment_made",
        {"amount": 1},
        3,
    )
    with pytest.raises(DeserializationError):
        MessagePayload(id=1, type="payment_made", body={}, timestamp=3)  # type: ignore[arg-type]


# -- emit is a coroutine function, as in 0.10 ------------------------------------------------------


class Shipped(EventBase):
    __topic__ = "shipments.{region}"
    __event_type__ = "shipped"
    region: Annotated[str, TopicSegment()]


async def test_emit_is_a_coroutine_function_and_fails_when_awaited() -> None:
    """0.10 users mock the emitter with ``create_autospec`` and start emits as tasks: ``emit`` is
    an ``async def``, and a bad event fails where it is awaited, not where it is called."""
    assert inspect.iscoroutinefunction(EventEmitter.emit)
    assert inspect.iscoroutinefunction(App.emit)
    mock = create_autospec(EventEmitter, instance=True)
    await mock.emit(Shipped(region="eu"))
    mock.emit.assert_awaited_once()

    async with App("memory://emit-is-a-coroutine", group="g") as app:
        pending = app.emit(Shipped(region="eu\nwest"))  # a control character: refused
        task = asyncio.ensure_future(pending)
        with pytest.raises(InvalidTopicError):
            await task
        await asyncio.create_task(app.emit(Shipped(region="eu")))
