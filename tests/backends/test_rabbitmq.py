"""RabbitMQ backend against a live broker (runs when DISPYTCH_BROKERS lists rabbitmq)."""

# No `from __future__ import annotations`: the README handler's annotations name locals.
import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import aio_pika
import pytest
from pydantic import BaseModel

from dispytch import App, Dependency, Event, EventBase, EventEmitter, EventListener, HandlerGroup
from dispytch.emitter.producer import Outgoing, ProducerTimeout
from dispytch.errors import ConfigurationError, EmitError, SubscriptionLostError
from dispytch.rabbitmq import (
    RabbitMQBackend,
    RabbitMQConsumer,
    RabbitMQEventConfig,
    RabbitMQProducer,
)
from dispytch.routing import TopicPattern
from tests.amqp_frames import publish_raw
from tests.helpers import eventually, require_broker, wait_until

URL = "amqp://guest:guest@127.0.0.1:5672/"

pytestmark = [pytest.mark.broker("rabbitmq"), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _rabbitmq_listed() -> None:
    require_broker("rabbitmq", 5672)


@dataclass
class Broker:
    """An admin connection plus what each test declared, deleted afterwards."""

    connection: aio_pika.abc.AbstractConnection
    uid: str
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    def name(self, prefix: str) -> str:
        return f"{prefix}_{self.uid}"

    def app_names(self) -> tuple[str, str, str]:
        """An exchange, a group and a topic for an App; the exchange, the group's queue and
        its dead-letter queue are deleted after the test."""
        exchange, group, topic = self.name("x"), self.name("g"), self.name("t")
        self.exchanges.append(exchange)
        self.queues += [group, f"dispytch.dlq.{group}"]
        return exchange, group, topic

    async def bound_exchange(self, key: str) -> tuple[Any, Any, Any]:
        """A fresh channel, a direct exchange and a queue bound to it for routing key ``key``
        (both deleted after the test)."""
        channel = await self.connection.channel()
        exchange_name, queue_name = self.name("x"), self.name("q")
        self.exchanges.append(exchange_name)
        self.queues.append(queue_name)
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.DIRECT)
        queue = await channel.declare_queue(queue_name)
        await queue.bind(exchange, routing_key=key)
        return channel, exchange, queue

    async def ready_count(self, queue: str) -> int:
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return declared.declaration_result.message_count or 0
        finally:
            await channel.close()


class Writes:
    """Stands in an aiormq channel's write queue: ``hook(n)`` runs on the n-th write, before
    it (which goes through unless the hook returns False) or, with ``after``, once it is
    queued."""

    def __init__(
        self, amqp: Any, hook: Callable[[int], Awaitable[bool]], *, after: bool = False
    ) -> None:
        self.amqp, self.real, self.hook, self.after, self.count = (
            amqp,
            amqp.write_queue,
            hook,
            after,
            0,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def put(self, item: Any) -> None:
        self.count += 1
        if self.after:
            await self.real.put(item)
            await self.hook(self.count)
        elif await self.hook(self.count):
            await self.real.put(item)

    def __enter__(self) -> "Writes":
        self.amqp.write_queue = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.amqp.write_queue = self.real


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(URL)
    state = Broker(connection, uuid.uuid4().hex[:10])
    yield state
    channel = await connection.channel()
    for queue in state.queues:
        # Quorum queues refuse if_unused (RabbitMQ 3.10 closes the connection with 540).
        await channel.queue_delete(queue, if_unused=False, if_empty=False)  # type: ignore[attr-defined]
    for exchange in state.exchanges:
        await channel.exchange_delete(exchange)  # type: ignore[attr-defined]
    await connection.close()


class Order(BaseModel):
    order_id: int


def order_event(topic: str, config: BaseModel | None = None) -> type[EventBase]:
    class OrderPlaced(EventBase):
        __topic__ = topic
        __event_type__ = "order_placed"
        __backend_config__ = config
        order_id: int

    return OrderPlaced


# -- seed style ---------------------------------------------------------------------------------


class User(BaseModel):
    id: str
    email: str
    name: str


class UserRegistered(EventBase):
    __topic__ = "user_events"
    __event_type__ = "user_registered"

    user: User
    timestamp: int


class UserCreatedEvent(BaseModel):
    user: User
    timestamp: int


class UserService:
    def __init__(self) -> None:
        self.seen: list[User] = []

    async def do_smth_with_the_user(self, user: User) -> None:
        self.seen.append(user)


async def test_seed_readme_example_wired_seed_style(broker: Broker) -> None:
    service = UserService()

    def get_user_service() -> UserService:
        return service

    user_events = HandlerGroup()

    @user_events.handler(topic="user_events", event="user_registered")
    async def handle_user_registered(
        event: Event[UserCreatedEvent],
        user_service: Annotated[UserService, Dependency(get_user_service)],
    ) -> None:
        await user_service.do_smth_with_the_user(event.body.user)

    # What a seed user writes: declare and bind with aio-pika, hand the objects to Dispytch.
    connection = await aio_pika.connect_robust(URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=16)
    exchange_name, queue_name = broker.name("seed_x"), broker.name("seed_q")
    broker.exchanges.append(exchange_name)
    broker.queues.append(queue_name)
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.DIRECT)
    queue = await channel.declare_queue(queue_name, durable=True)
    await queue.bind(exchange, routing_key="user_events")

    listener = EventListener(RabbitMQConsumer(queue))
    listener.add_handler_group(user_events)
    task = asyncio.create_task(listener.listen())
    emitter = EventEmitter(RabbitMQProducer(exchange))
    await emitter.emit(
        UserRegistered(
            user=User(id=str(uuid.uuid4()), email="example@mail.com", name="John Doe"),
            timestamp=1,
        )
    )
    await wait_until(lambda: len(service.seen) == 1, what="the README event")
    assert service.seen[0].name == "John Doe"
    listener.stop()
    await task
    await connection.close()
    assert await broker.ready_count(queue_name) == 0  # acked, not handed back on close


# -- producer -----------------------------------------------------------------------------------


async def test_emit_to_unroutable_key_raises(broker: Broker) -> None:
    exchange_name = broker.name("x")
    broker.exchanges.append(exchange_name)
    backend = RabbitMQBackend(URL, exchange=exchange_name)
    await backend.connect()
    try:
        with pytest.raises(EmitError, match="no queue is bound for routing key 'nobody"):
            await backend.producer().send(broker.name("nobody"), b"{}")
    finally:
        await backend.close()
    # Seed style, on a channel left at aio-pika's default on_return_raises=False.
    channel = await broker.connection.channel()
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    with pytest.raises(EmitError, match="no queue is bound"):
        await RabbitMQProducer(exchange).send("nobody.here", b"{}")


async def test_a_send_is_framed_without_an_aio_pika_message(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    _channel, exchange, queue = await broker.bound_exchange("t")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an aio_pika.Message was built for a send")

    monkeypatch.setattr(aio_pika.Message, "__init__", refuse)
    await RabbitMQProducer(exchange).send("t", b"{}", headers={"a": "b"}, key=b"k")
    monkeypatch.undo()
    got = await queue.get(timeout=5)
    await got.ack()
    assert (got.body, got.headers["a"], got.delivery_mode) == (
        b"{}",
        "b",
        aio_pika.DeliveryMode.PERSISTENT,
    )


async def test_confirm_timeout_raises_producer_timeout(broker: Broker) -> None:
    _channel, exchange, _queue = await broker.bound_exchange("t")
    # No broker confirms within a microsecond: the wait times out before the round trip.
    with pytest.raises(ProducerTimeout):
        await RabbitMQProducer(exchange, timeout=1e-6).send("t", b"{}")


async def test_event_config_picks_exchange_and_properties(broker: Broker) -> None:
    channel = await broker.connection.channel()
    a_name, b_name, queue_name = broker.name("a"), broker.name("b"), broker.name("q")
    broker.exchanges += [a_name, b_name]
    broker.queues.append(queue_name)
    a = await channel.declare_exchange(a_name, aio_pika.ExchangeType.DIRECT)
    b = await channel.declare_exchange(b_name, aio_pika.ExchangeType.DIRECT)
    queue = await channel.declare_queue(queue_name)
    await queue.bind(b, routing_key="orders")
    config = RabbitMQEventConfig(
        exchange=b_name, correlation_id="corr-1", priority=3, headers={"x-trace": "t1"}
    )
    await EventEmitter(RabbitMQProducer([a, b])).emit(order_event("orders", config)(order_id=1))
    got = await queue.get(timeout=5)
    await got.ack()
    assert got.correlation_id == "corr-1"
    assert got.priority == 3
    assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert got.headers["x-trace"] == "t1"
    with pytest.raises(ConfigurationError, match="names an exchange"):
        await RabbitMQProducer(a).send("orders", b"{}", RabbitMQEventConfig(exchange="nope"))


async def test_send_many_confirms_each_message_and_reports_each_failure(broker: Broker) -> None:
    channel = await broker.connection.channel()
    a_name, b_name, queue_name = broker.name("a"), broker.name("b"), broker.name("q")
    broker.exchanges += [a_name, b_name]
    broker.queues.append(queue_name)
    a = await channel.declare_exchange(a_name, aio_pika.ExchangeType.DIRECT)
    b = await channel.declare_exchange(b_name, aio_pika.ExchangeType.DIRECT)
    queue = await channel.declare_queue(queue_name)
    await queue.bind(a, routing_key="orders")
    await queue.bind(b, routing_key="orders")
    on_b = RabbitMQEventConfig(exchange=b_name, correlation_id="corr-b", priority=2)
    big = b"x" * 300_000  # above the frame size: several body frames
    outgoing = [
        Outgoing("orders", b"0", key=b"k0", headers={"h": "v"}),
        Outgoing("nobody", b"1"),  # unroutable: returned by the broker
        Outgoing("orders", b"2", on_b),
        Outgoing("orders", b"3", RabbitMQEventConfig(exchange="missing")),
        Outgoing("orders", big),
        Outgoing("k" * 300, b"5"),  # longer than AMQP allows: refused, never sent
    ]
    results = await RabbitMQProducer([a, b]).send_many(outgoing)
    assert results[0] is None and results[2] is None and results[4] is None
    assert isinstance(results[5], EmitError) and "255" in str(results[5])
    assert isinstance(results[1], EmitError) and "no queue is bound" in str(results[1])
    assert isinstance(results[3], ConfigurationError)
    got = {}
    for _ in range(3):
        message = await queue.get(timeout=5)
        await message.ack()
        got[message.body[:1]] = message
    assert got[b"0"].headers == {"h": "v", "x-dispytch-key": "k0"}
    assert got[b"0"].delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert (got[b"2"].exchange, got[b"2"].correlation_id, got[b"2"].priority) == (
        b_name,
        "corr-b",
        2,
    )
    assert got[b"x"].body == big
    # Many at once, in order, on one channel's delivery tags (a batch is one write).
    bodies = [str(i).encode() for i in range(2000)]
    assert await RabbitMQProducer(a).send_many([Outgoing("orders", x) for x in bodies]) == [
        None
    ] * len(bodies)
    received = []
    while len(received) < len(bodies):
        message = await queue.get(timeout=5)
        received.append(message.body)
        await message.ack()
    assert received == bodies


async def test_send_many_on_a_closed_channel_reports_every_message(broker: Broker) -> None:
    channel = await broker.connection.channel()
    exchange_name = broker.name("x")
    broker.exchanges.append(exchange_name)
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.DIRECT)
    await channel.close()
    results = await RabbitMQProducer(exchange, timeout=5).send_many(
        [Outgoing("t", b"1"), Outgoing("t", b"2")]
    )
    assert all(isinstance(r, EmitError) for r in results), results


async def test_send_many_times_out_or_loses_its_channel_without_hanging(broker: Broker) -> None:
    channel, exchange, _queue = await broker.bound_exchange("t")

    # Frames that never reach the broker are never confirmed: the wait ends at the timeout.
    async def swallow(n: int) -> bool:
        return False

    with Writes(await channel.get_underlay_channel(), swallow):
        results = await RabbitMQProducer(exchange, timeout=0.2).send_many(
            [Outgoing("t", b"1"), Outgoing("t", b"2")]
        )
    assert all(isinstance(r, ProducerTimeout) for r in results), results
    # That channel's delivery tags no longer match the broker's: use a fresh one.
    channel = await broker.connection.channel()
    exchange = await channel.get_exchange(exchange.name)
    batch = [Outgoing("t", str(i).encode()) for i in range(500)]
    # The channel closes while the confirms are awaited: each message is confirmed or fails.
    sending = asyncio.create_task(RabbitMQProducer(exchange, timeout=10).send_many(batch))
    await asyncio.sleep(0)
    await channel.close()
    results = await asyncio.wait_for(sending, 15)
    assert all(r is None or isinstance(r, EmitError) for r in results), results[:3]


async def test_send_many_waits_for_every_confirm_even_when_early_ones_come_first(
    broker: Broker,
) -> None:
    channel, exchange, _queue = await broker.bound_exchange("ok")
    amqp: Any = await channel.get_underlay_channel()

    async def first_write_lags(n: int) -> bool:
        """After the first write (100 messages), wait until the broker confirmed all of them
        before the rest of the batch is even registered."""
        if n == 1:
            await wait_until(lambda: not amqp.confirmations, what="the first 100 confirms")
        return True

    with Writes(amqp, first_write_lags, after=True):
        batch = [Outgoing("ok" if i < 150 else "nobody", str(i).encode()) for i in range(300)]
        results = await RabbitMQProducer(exchange).send_many(batch)
    assert results[:150] == [None] * 150
    assert all(isinstance(r, EmitError) and "no queue is bound" in str(r) for r in results[150:])


@pytest.mark.private_access
async def test_a_cancelled_send_many_leaves_the_channel_numbering_intact(broker: Broker) -> None:
    channel, exchange, _queue = await broker.bound_exchange("ok")
    amqp: Any = await channel.get_underlay_channel()

    async def full_after_first_write(n: int) -> bool:
        if n > 1:  # as if the connection's write queue stayed full
            await asyncio.Event().wait()
        return True

    producer = RabbitMQProducer(exchange, timeout=10)
    with Writes(amqp, full_after_first_write) as writes:
        sending = asyncio.create_task(producer.send_many([Outgoing("ok", b"x")] * 150))
        await wait_until(lambda: writes.count == 2, what="the second write to block")
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
    # Only the 100 messages written were numbered; the next publishes line up with the broker.
    await wait_until(lambda: not amqp.confirmations, what="the first 100 confirms")
    assert amqp.delivery_tag == 100 and not amqp.message_id_delivery_tag
    assert await producer.send_many([Outgoing("ok", b"y")] * 50) == [None] * 50
    await producer.send("ok", b"z")
    await wait_until(lambda: amqp.delivery_tag == 151, what="the numbering to go on")


# -- consumer -----------------------------------------------------------------------------------


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_key_headers_and_delivery_attempt(broker: Broker, queue_type: str) -> None:
    exchange_name, group, topic = broker.name("x"), broker.name("g"), broker.name("t")
    broker.exchanges.append(exchange_name)
    broker.queues.append(group)
    backend = RabbitMQBackend(URL, exchange=exchange_name, queue_type=queue_type)  # type: ignore[arg-type]
    await backend.connect()
    consumer = backend.consumer(group, prefetch=4)
    try:
        await consumer.start([TopicPattern.parse(topic, ".")])
        await backend.producer().send(topic, b"payload", headers={"h": "v"}, key=b"k-1")
        stream = consumer.listen()
        first = await anext(stream)
        assert (first.topic, first.payload, first.key) == (topic, b"payload", b"k-1")
        assert first.headers["h"] == "v"
        assert first.delivery_attempt == 1
        await consumer.nack(first)
        second = await anext(stream)
        assert second.payload == b"payload"
        assert second.delivery_attempt == 2
        await consumer.ack(second)
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await backend.close()
    assert await broker.ready_count(group) == 0


async def test_a_deleted_queue_ends_listen_with_an_error(broker: Broker) -> None:
    connection = await aio_pika.connect(URL)
    channel = await connection.channel()
    queue_name = broker.name("gone")
    queue = await channel.declare_queue(queue_name)
    consumer = RabbitMQConsumer(queue, dead_letter_exchange=None)
    await consumer.start([])
    stream = consumer.listen()
    admin = await broker.connection.channel()
    await admin.queue_delete(queue_name)  # type: ignore[attr-defined]
    with pytest.raises(SubscriptionLostError, match=queue_name):
        await asyncio.wait_for(anext(stream), 10)
    await consumer.close()
    await connection.close()


async def test_batched_acks_never_cover_unsettled_deliveries(broker: Broker) -> None:
    queue_name = broker.name("q")
    broker.queues.append(queue_name)
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True)
        for n in range(1, 10):
            await channel.default_exchange.publish(
                aio_pika.Message(str(n).encode()), routing_key=queue_name
            )
        consumer = RabbitMQConsumer(queue)
        await consumer.start([])
        stream = consumer.listen()
        got = {}
        for _ in range(9):
            message = await anext(stream)
            got[int(message.payload)] = message
        sent: list[tuple[str, int, bool]] = []
        amqp = got[1].extra.channel
        real_ack, real_nack = amqp.basic_ack, amqp.basic_nack

        async def spy_ack(tag: int, multiple: bool = False, **kw: Any) -> None:
            sent.append(("ack", tag, multiple))
            await real_ack(tag, multiple=multiple, **kw)

        async def spy_nack(tag: int, multiple: bool = False, **kw: Any) -> None:
            sent.append(("nack", tag, multiple))
            await real_nack(tag, multiple=multiple, **kw)

        amqp.basic_ack, amqp.basic_nack = spy_ack, spy_nack
        # Settled out of order; the batch goes out on the timer (or when the consumer idles).
        for n in (3, 2):
            await consumer.ack(got[n])
        await consumer.nack(got[5])  # handed back at once, alone
        for n in (1, 4, 6, 7):
            await consumer.ack(got[n])
        # 1..7 is one contiguous settled run: one multiple ack; 8 and 9 are still in flight.
        await wait_until(lambda: ("ack", 7, True) in sent, what="the batched ack")
        assert sent == [("nack", 5, False), ("ack", 7, True)]
        await consumer.ack(got[9])  # 8 still in flight: 9 may only be acked on its own
        await consumer.close()
        # On close: 9 alone, and the redelivered 5 (a new tag, > 9) if it arrived, handed back.
        assert [s for s in sent[2:] if s[0] == "ack"] == [("ack", 9, False)]
        assert all(s[0] == "nack" and s[1] > 9 for s in sent[2:] if s[0] != "ack")
        await channel.close()  # 8 was never settled: the broker requeues it

        async def requeued() -> bool:  # the queue takes them back after the close returns
            return await broker.ready_count(queue_name) == 2  # 8, and 5 handed back

        await eventually(requeued, "8 and 5 back in the queue")
    finally:
        await connection.close()


async def test_unacked_message_redelivered_after_consumer_dies(broker: Broker) -> None:
    exchange_name, group, topic = broker.name("x"), broker.name("g"), broker.name("t")
    broker.exchanges.append(exchange_name)
    broker.queues.append(group)
    entered = asyncio.Event()
    release = asyncio.Event()
    seen: list[tuple[str, str]] = []

    first = App(URL, group=group, exchange=exchange_name, shutdown_timeout=1.0)

    @first.handler(topic=topic, event="order_placed")
    async def stuck(event: Event[Order]) -> None:
        seen.append(("first", event.id))
        entered.set()
        await release.wait()

    second = App(URL, group=group, exchange=exchange_name)

    @second.handler(topic=topic, event="order_placed")
    async def healthy(event: Event[Order]) -> None:
        seen.append(("second", event.id))

    await first.start()
    try:
        sent = order_event(topic)(order_id=1)
        await first.emit(sent)
        await asyncio.wait_for(entered.wait(), 10)
        # The consuming process dies before acking: its connection goes away.
        assert first.listener is not None
        await first.listener.consumer.connection.close()  # type: ignore[attr-defined]
        await second.start()
        await wait_until(lambda: ("second", sent.id) in seen, what="the redelivered event")
        assert seen == [("first", sent.id), ("second", sent.id)]
    finally:
        release.set()
        await first.stop()
        await second.stop()
    assert await broker.ready_count(group) == 0


async def test_dead_letter_keeps_body_headers_and_properties(broker: Broker) -> None:
    exchange_name, group, topic = broker.app_names()
    app = App(URL, group=group, exchange=exchange_name)

    @app.handler(topic=topic, event="order_placed", retries=1, retry_interval=0.01)
    async def broken(event: Event[Order]) -> None:
        raise ValueError(f"no stock for {event.body.order_id}")

    config = RabbitMQEventConfig(
        partition_key="cust-7",
        correlation_id="corr-7",
        headers={"x-trace": "t7", "x-dispytch-reason": "forged"},
    )
    sent = order_event(topic, config)(order_id=7)
    async with app:
        await app.emit(sent)
        dead: list[Any] = []

        async def poll() -> None:
            while not dead:
                dead[:] = await app.backend.dead_letters(topic)
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), 20)
    letter = dead[0]
    assert sent.id.encode() in letter.payload
    assert letter.topic == topic
    assert letter.key == b"cust-7"
    assert letter.reason == "handler"
    assert letter.attempts == 2
    assert letter.error == "ValueError: no stock for 7"
    assert letter.handler is not None and letter.handler.endswith("broken")
    assert letter.headers["x-dispytch-original-topic"] == topic
    assert letter.headers["x-dispytch-original-exchange"] == exchange_name
    assert int(letter.headers["x-dispytch-failed-at"]) > 0
    assert letter.headers["x-trace"] == "t7"
    assert "x-delivery-count" not in letter.headers
    # Reading is non-destructive (also after the app closed its connections), and the AMQP
    # properties of the original travel with the dead letter.
    assert len(await app.backend.dead_letters(topic)) == 1
    assert await broker.ready_count(f"dispytch.dlq.{group}") == 1
    assert await broker.ready_count(group) == 0
    channel = await broker.connection.channel()
    raw = await (await channel.declare_queue(f"dispytch.dlq.{group}", passive=True)).get(timeout=5)
    await raw.nack(requeue=True)
    assert raw.correlation_id == "corr-7"
    assert raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_password_never_shown() -> None:
    backend = RabbitMQBackend("amqp://guest:s3cret-pw@127.0.0.1:5672/")
    assert "s3cret-pw" not in repr(backend)
    with pytest.raises(ConfigurationError) as caught:
        await backend.connect()
    assert "s3cret-pw" not in str(caught.value)
    assert "guest:***@127.0.0.1" in str(caught.value)


# -- faults -------------------------------------------------------------------------------------


class ResettableProxy:
    """A TCP proxy to RabbitMQ whose connections can be cut, like a network reset."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5672)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def reset(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.reset()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def emit_until_confirmed(app: App, event: EventBase, timeout: float) -> list[Exception]:
    failures: list[Exception] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await app.emit(event)
            return failures
        except EmitError as exc:
            failures.append(exc)
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_app_recovers_after_connection_reset(broker: Broker) -> None:
    exchange_name, group, topic = broker.name("x"), broker.name("g"), broker.name("t")
    broker.exchanges.append(exchange_name)
    broker.queues.append(group)
    proxy = ResettableProxy()
    port = await proxy.start()
    got: list[int] = []
    app = App(
        f"amqp://guest:guest@127.0.0.1:{port}/",
        group=group,
        exchange=exchange_name,
        reconnect_interval=0.2,  # aio-pika's own option, passed through
    )

    @app.handler(topic=topic, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        got.append(event.body.order_id)

    OrderPlaced = order_event(topic)
    try:
        async with app:
            await app.emit(OrderPlaced(order_id=1))
            await wait_until(lambda: got == [1], what="the event before the reset")
            connections = proxy.accepted
            proxy.reset()  # both the publishing and the consuming connection drop
            # An emit racing the reset may fail loudly (never silently); once the client saw
            # the drop, emits wait for the channel to come back and are confirmed.
            failures = await emit_until_confirmed(app, OrderPlaced(order_id=2), timeout=15)
            assert all(isinstance(f, EmitError) for f in failures)
            await wait_until(lambda: 2 in got, timeout=15, what="the event after the reset")
            assert proxy.accepted >= connections + 2  # both reconnected
    finally:
        await proxy.close()
    # 1 comes again when its ack was still on its way as the connection dropped (at least
    # once); 2, emitted after the reset, is handled once.
    assert got[0] == 1 and set(got) == {1, 2} and got.count(2) == 1, got


# -- poison deliveries: what pamqp itself cannot decode ----------------------------------------


async def _publish_raw(exchange: str, routing_key: bytes, body: bytes, **parts: Any) -> None:
    await publish_raw(URL, exchange, routing_key, body, **parts)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _envelope(n: int) -> bytes:
    return json.dumps(
        {"id": f"id-{n}", "type": "order_placed", "body": {"order_id": n}, "timestamp": 1}
    ).encode()


POISONS = {
    "routing-key": dict(suffix=b".\xff\xfe"),
    "header-name": dict(headers=[(b"ok", b"v"), (b"\xffname\xfe", b"\x00raw")]),
    "message-id": dict(message_id=b"id-\xff"),
    "timestamp": dict(timestamp=0xFFFFFFFFFFFFFFF0),
}


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
@pytest.mark.parametrize("poison", sorted(POISONS))
@pytest.mark.private_access
async def test_a_delivery_pamqp_cannot_decode_is_dead_lettered_without_a_reconnect(
    broker: Broker, poison: str, queue_type: str
) -> None:
    exchange_name, group, topic = broker.app_names()
    proxy = ResettableProxy()
    port = await proxy.start()
    handled: list[int] = []

    def build() -> App:
        app = App(
            f"amqp://guest:guest@127.0.0.1:{port}/",
            group=group,
            exchange=exchange_name,
            queue_type=queue_type,
        )

        @app.handler(topic=f"{topic}.{{kind}}", event="order_placed")
        async def handle(event: Event[Order]) -> None:
            handled.append(event.body.order_id)

        return app

    parts = dict(POISONS[poison])
    routing_key = f"{topic}.created".encode()
    if "suffix" in parts:
        routing_key = topic.encode() + parts.pop("suffix")
    try:
        app = build()
        async with app:
            connections = proxy.accepted
            await _publish_raw(exchange_name, routing_key, _envelope(1), **parts)
            await _publish_raw(exchange_name, f"{topic}.created".encode(), _envelope(2))
            await wait_until(lambda: handled == [2], timeout=20, what="the good event")
            topic_text = routing_key.decode("utf-8", "backslashreplace")
            dead: list[Any] = []

            async def stored() -> bool:
                dead[:] = await app.backend.dead_letters(topic_text)
                return bool(dead)

            await eventually(stored, "the dead letter", timeout=20)
            assert proxy.accepted == connections  # no connection was lost on the way
        [letter] = dead
        assert json.loads(letter.payload)["body"]["order_id"] == 1
        part = {"routing-key": "topic", "header-name": "headers"}.get(poison, "properties")
        assert letter.headers["x-dispytch-undecodable"] == part
        assert not [k for k in letter.headers if k.startswith("x-dispytch-forwarded-")]
        assert letter.reason == "decode"
        if poison == "routing-key":
            assert base64.b64decode(letter.headers["x-dispytch-original-topic-b64"]) == routing_key
        if poison == "header-name":
            assert letter.headers["ok"] == "v"
            pair = _b64(b"\xffname\xfe") + ":" + _b64(b"\x00raw")  # name and value
            assert letter.headers["x-dispytch-undecodable-header-1"] == pair
        # Acknowledged: a restarted app does not see it again, and handles what comes next.
        app = build()
        async with app:
            await _publish_raw(exchange_name, f"{topic}.created".encode(), _envelope(3))
            await wait_until(lambda: handled == [2, 3], timeout=20, what="the next event")
        assert await broker.ready_count(group) == 0
    finally:
        await proxy.close()


# -- delivery counts only from the broker ------------------------------------------------------


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_forged_delivery_count_never_skips_the_handlers(
    broker: Broker, queue_type: str
) -> None:
    exchange_name, group, topic = broker.app_names()
    handled: list[int] = []
    app = App(URL, group=group, exchange=exchange_name, queue_type=queue_type, max_deliveries=3)

    @app.handler(topic=topic, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        handled.append(event.body.order_id)

    async with app:
        # A publisher's own x-delivery-count: 1000 (RabbitMQ writes the real one only on a
        # quorum queue, over it; a classic queue passes it through).
        config = RabbitMQEventConfig(headers={"x-delivery-count": 1000})
        await app.emit(order_event(topic, config)(order_id=1))
        await wait_until(lambda: handled == [1], timeout=20, what="the event handled")
        assert await app.backend.dead_letters(topic) == []


# -- dead-letter queues: bounded in number, valid names, a fallback ----------------------------


async def test_one_dead_letter_queue_per_group_however_many_topics_fail(broker: Broker) -> None:
    exchange_name, group, prefix = broker.name("x"), broker.name("g"), broker.name("t")
    broker.exchanges.append(exchange_name)
    broker.queues += [group, f"dispytch.dlq.{group}"]
    app = App(URL, group=group, exchange=exchange_name)

    @app.handler(topic=f"{prefix}.{{n}}", event="order_placed")
    async def broken(event: Event[Order]) -> None:
        raise ValueError(f"no stock for {event.body.order_id}")

    topics = [f"{prefix}.{n}" for n in range(20)]
    async with app:
        for n, topic in enumerate(topics):
            await app.emit(order_event(topic)(order_id=n))

        async def all_stored() -> bool:
            return await broker.ready_count(f"dispytch.dlq.{group}") == len(topics)

        await eventually(all_stored, "every dead letter", timeout=30)
        letters = await app.backend.dead_letters(topics[7])
    assert [json.loads(d.payload)["body"]["order_id"] for d in letters] == [7]
    assert letters[0].topic == topics[7]
    channel = await broker.connection.channel()
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await channel.declare_queue(f"{topics[7]}.dlq", passive=True)  # no queue per topic


async def test_dead_letters_in_queues_of_earlier_versions_stay_readable(broker: Broker) -> None:
    topic = broker.name("t")
    legacy = f"{topic}.dlq"
    broker.queues.append(legacy)
    channel = await broker.connection.channel()
    await channel.declare_queue(legacy, durable=True)
    await channel.default_exchange.publish(
        aio_pika.Message(
            b"old",
            headers={"x-dispytch-reason": "handler", "x-dispytch-original-topic": topic},
        ),
        routing_key=legacy,
    )
    backend = RabbitMQBackend(URL)
    [letter] = await backend.dead_letters(topic)
    assert (letter.payload, letter.reason, letter.topic) == (b"old", "handler", topic)

    async def still_there() -> bool:  # read, not removed: back once the queue had the requeue
        return await broker.ready_count(legacy) == 1

    await eventually(still_there, "the legacy dead letter back in its queue")


async def test_dead_letters_of_the_longest_topic_and_group_names(broker: Broker) -> None:
    exchange_name = broker.name("x")
    group = broker.name("g").ljust(255, "g")  # the longest queue name AMQP allows
    topic = broker.name("t").ljust(255, "t")  # the longest routing key AMQP allows
    broker.exchanges.append(exchange_name)
    broker.queues.append(group)
    app = App(URL, group=group, exchange=exchange_name)

    @app.handler(topic=topic, event="order_placed")
    async def broken(event: Event[Order]) -> None:
        raise ValueError("no stock")

    async with app:
        await app.emit(order_event(topic)(order_id=1))
        dead: list[Any] = []

        async def stored() -> bool:
            dead[:] = await app.backend.dead_letters(topic)
            return bool(dead)

        await eventually(stored, "the dead letter", timeout=20)
    from dispytch.rabbitmq.dead_letters import dead_letter_queue

    name = dead_letter_queue(group)
    broker.queues.append(name)
    assert len(name.encode()) <= 255
    assert dead[0].topic == topic


@pytest.mark.private_access
async def test_dead_letters_go_to_the_group_fallback_queue_when_their_queue_fails(
    broker: Broker,
) -> None:
    exchange_name, group, topic = broker.name("x"), broker.name("g"), broker.name("t")
    dead_letter_exchange = broker.name("dlx")
    broker.exchanges += [exchange_name, dead_letter_exchange]
    broker.queues += [group, f"dispytch.dlq-fallback.{group}"]
    # Someone declared the dead-letter exchange with another type: every declare of it fails.
    channel = await broker.connection.channel()
    await channel.declare_exchange(dead_letter_exchange, aio_pika.ExchangeType.FANOUT)
    handled: list[int] = []
    app = App(URL, group=group, exchange=exchange_name, dead_letter_exchange=dead_letter_exchange)

    @app.handler(topic=f"{topic}.{{kind}}", event="order_placed")
    async def handle(event: Event[Order]) -> None:
        handled.append(event.body.order_id)

    async with app:
        await _publish_raw(exchange_name, topic.encode() + b".\xff", _envelope(1))
        await _publish_raw(exchange_name, f"{topic}.ok".encode(), _envelope(2))
        await wait_until(lambda: handled == [2], timeout=30, what="the good event")
        dead: list[Any] = []

        async def fallen_back() -> bool:  # after the listener's retries of the dead-letter queue
            dead[:] = await app.backend.dead_letters(topic + ".\\xff")
            return bool(dead)

        await eventually(fallen_back, "the dead letter in the fallback queue", timeout=30)
        await app.emit(order_event(f"{topic}.ok")(order_id=3))  # emits were not disturbed
        await wait_until(lambda: handled == [2, 3], timeout=20, what="the emitted event")
    assert [json.loads(d.payload)["body"]["order_id"] for d in dead] == [1]
    assert await broker.ready_count(f"dispytch.dlq-fallback.{group}") == 1


@pytest.mark.private_access
async def test_a_reconnected_consumer_is_still_guarded_against_undecodable_deliveries(
    broker: Broker,
) -> None:
    exchange_name, group, topic = broker.app_names()
    proxy = ResettableProxy()
    port = await proxy.start()
    handled: list[int] = []
    app = App(
        f"amqp://guest:guest@127.0.0.1:{port}/",
        group=group,
        exchange=exchange_name,
        reconnect_interval=0.2,
    )

    @app.handler(topic=f"{topic}.{{kind}}", event="order_placed")
    async def handle(event: Event[Order]) -> None:
        handled.append(event.body.order_id)

    try:
        async with app:
            proxy.reset()  # every connection drops; aio-pika makes new ones
            await emit_until_confirmed(app, order_event(f"{topic}.a")(order_id=1), timeout=15)
            await wait_until(lambda: handled == [1], timeout=15, what="flowing again")
            connections = proxy.accepted
            await _publish_raw(exchange_name, topic.encode() + b".\xff", _envelope(2))
            await _publish_raw(exchange_name, f"{topic}.b".encode(), _envelope(3))
            await wait_until(lambda: handled == [1, 3], timeout=20, what="the next event")
            assert proxy.accepted == connections
    finally:
        await proxy.close()
