"""Core NATS backend against a live server (runs when DISPYTCH_BROKERS lists nats_core)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATSClient
from pydantic import BaseModel

from dispytch import App, Event, EventBase, EventEmitter, EventListener
from dispytch.emitter.producer import Outgoing
from dispytch.errors import ConfigurationError, EmitError
from dispytch.nats.core import NATSCoreBackend, NATSCoreConsumer, NATSCoreProducer
from dispytch.routing import TopicPattern
from tests.backends.proxy import FaultyProxy
from tests.helpers import require_broker, wait_until

pytestmark = pytest.mark.timeout(60)

SERVER = "nats://127.0.0.1:4222"
URL = "nats+core://127.0.0.1:4222"


class Order(BaseModel):
    order_id: int


def order_event(subject: str) -> type[EventBase]:
    class OrderPlaced(EventBase):
        __topic__ = subject
        __event_type__ = "order_placed"
        order_id: int

    return OrderPlaced


@pytest.fixture
async def nc() -> AsyncIterator[NATSClient]:
    require_broker("nats_core", 4222)
    client = await nats.connect(SERVER)
    yield client
    await client.close()


@pytest.fixture
def subject() -> str:
    return f"core.{uuid.uuid4().hex[:10]}"


async def test_seed_style_round_trip_with_key_and_headers(nc: NATSClient, subject: str) -> None:
    got: list[tuple[int, str]] = []
    consumer = NATSCoreConsumer(nc, queue="seed")
    listener = EventListener(consumer, topic_delimiter=".")

    @listener.handler(topic=subject, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        got.append((event.body.order_id, event.topic))

    await listener.subscribe()
    task = asyncio.create_task(listener.listen())
    producer = NATSCoreProducer(nc)
    await EventEmitter(producer).emit(order_event(subject)(order_id=7))
    await wait_until(lambda: got == [(7, subject)], what="the seed-style event")
    listener.stop()
    await asyncio.wait_for(task, 10)

    # Key and headers travel in NATS headers; a plain subscriber reads them back.
    raw = await nc.subscribe(subject)
    await producer.send(subject, b"raw", key=b"k1", headers={"trace": "line1\nline2"})
    msg = await raw.next_msg(timeout=5)
    assert msg.data == b"raw"
    assert msg.headers == {"trace": "line1 line2", "x-dispytch-key": "k1"}


async def test_a_group_shares_events_and_every_group_gets_them(subject: str) -> None:
    require_broker("nats_core", 4222)
    seen: dict[str, list[int]] = {"a1": [], "a2": [], "b": []}
    apps = []
    for name, group in (("a1", "a"), ("a2", "a"), ("b", "b")):
        app = App(URL, group=f"{group}_{subject}")

        @app.handler(topic=subject, event="order_placed")
        async def handle(event: Event[Order], _name: str = name) -> None:
            seen[_name].append(event.body.order_id)

        await app.start()
        apps.append(app)
    try:
        await apps[0].emit_many(order_event(subject)(order_id=i) for i in range(200))
        await wait_until(
            lambda: len(seen["a1"]) + len(seen["a2"]) == 200 and len(seen["b"]) == 200,
            what="200 events in each group",
        )
        assert sorted(seen["a1"] + seen["a2"]) == list(range(200))
        assert seen["a1"] and seen["a2"], "the queue group shares the work"
        assert seen["b"] == list(range(200))
    finally:
        for app in apps:
            await app.stop()


async def test_send_many_reports_each_message(nc: NATSClient, subject: str) -> None:
    sub = await nc.subscribe(subject)
    producer = NATSCoreProducer(nc)
    too_big = b"x" * (nc.max_payload + 1)
    results = await producer.send_many(
        [Outgoing(subject, b"1"), Outgoing(subject, too_big), Outgoing(subject, b"3")]
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], EmitError) and "max_payload" in str(results[1])
    assert [(await sub.next_msg(timeout=5)).data for _ in range(2)] == [b"1", b"3"]
    await nc.close()
    with pytest.raises(EmitError, match="could not publish"):
        await producer.send(subject, b"late")


def spy_on_writes(transport: Any) -> tuple[list[bytes], Callable[[], None]]:
    """Record what nats-py writes to ``transport``'s socket, in order; and how to stop."""
    written: list[bytes] = []
    write, writelines = transport.write, transport.writelines

    def spy_write(data: bytes) -> None:
        written.append(bytes(data))
        write(data)

    def spy_writelines(parts: list[bytes]) -> None:
        written.append(b"".join(bytes(p) for p in parts))
        writelines(parts)

    def restore() -> None:
        transport.write, transport.writelines = write, writelines

    transport.write, transport.writelines = spy_write, spy_writelines
    return written, restore


async def test_a_send_returns_only_after_its_publish_went_out_before_the_ping(
    nc: NATSClient, subject: str
) -> None:
    """The PONG that confirms a send answers a PING written after the send's PUB, also when
    the socket pushes back (nats-py writes PINGs at once but buffers publishes)."""
    transport: Any = nc._transport
    written, restore = spy_on_writes(transport)
    drain = transport.drain

    async def slow_drain() -> None:  # back-pressure: the flusher task lags behind
        await asyncio.sleep(0.01)
        await drain()

    transport.drain = slow_drain
    producer = NATSCoreProducer(nc)
    unwritten = 0

    async def one(i: int) -> None:
        nonlocal unwritten
        tag = b"<%06d>" % i
        await producer.send(subject, tag)
        if not any(tag in chunk for chunk in written):
            unwritten += 1

    try:
        for round_ in range(5):
            await asyncio.gather(*(one(round_ * 100 + i) for i in range(100)))
    finally:
        restore()
        transport.drain = drain
    assert unwritten == 0


async def test_start_returns_only_after_the_server_read_the_subscriptions(
    nc: NATSClient, subject: str
) -> None:
    """The PONG that start() waits for answers a PING written after the SUBs: a message
    published from elsewhere once start() returned is never missed (nats-py writes the PING
    at once but leaves the SUB in its buffer for its flusher task)."""
    connection = await nats.connect(SERVER)
    written, restore = spy_on_writes(connection._transport)
    consumer = NATSCoreConsumer(connection, subjects=[subject, f"{subject}.b"], queue="g")
    try:
        await consumer.start([])
        wire = b"".join(written)
        last_ping = wire.rindex(b"PING\r\n")
        for name in (subject, f"{subject}.b"):
            assert -1 < wire.find(f"SUB {name} g ".encode()) < last_ping, wire
        await nc.publish(subject, b"1")  # and so: heard
        stream = consumer.listen()
        message = await asyncio.wait_for(anext(stream), 5)
        await stream.aclose()
        assert message.payload == b"1"
    finally:
        restore()
        await consumer.close()
        await connection.close()


async def test_close_waits_for_the_sends_being_confirmed(subject: str) -> None:
    require_broker("nats_core", 4222)
    async with FaultyProxy(4222) as proxy:
        nc = await nats.connect(f"nats://127.0.0.1:{proxy.port}")
        sub = await nc.subscribe(subject)
        producer = NATSCoreProducer(nc, timeout=10)
        try:
            await producer.send(subject, b"0")
            proxy.stall()  # no PONG now: the first send waits on its own round trip
            first = asyncio.create_task(producer.send(subject, b"1"))
            await asyncio.sleep(0.05)
            later = [asyncio.create_task(producer.send(subject, b"%d" % i)) for i in (2, 3)]
            await asyncio.sleep(0.05)
            closing = asyncio.create_task(producer.close())
            await asyncio.sleep(0.1)
            assert not any(t.done() for t in (first, *later, closing))
            proxy.resume()
            await asyncio.wait_for(asyncio.gather(first, *later, closing), 10)
            got = [(await sub.next_msg(timeout=5)).data for _ in range(4)]
            assert got == [b"0", b"1", b"2", b"3"]
        finally:
            await nc.close()


async def test_a_slow_handler_holds_at_most_buffer_size_and_loses_nothing(
    nc: NATSClient, subject: str
) -> None:
    consumer = NATSCoreConsumer(nc, queue="slow", buffer_size=4)
    listener = EventListener(consumer, topic_delimiter=".", concurrency=2)
    got: list[int] = []
    peak = 0

    @listener.handler(topic=subject, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        nonlocal peak
        peak = max(peak, len(consumer._buffer))
        await asyncio.sleep(0.001)
        got.append(event.body.order_id)

    await listener.subscribe()
    task = asyncio.create_task(listener.listen())
    await EventEmitter(NATSCoreProducer(nc)).emit_many(
        order_event(subject)(order_id=i) for i in range(300)
    )
    await wait_until(lambda: len(got) == 300, what="300 events through a small buffer")
    assert sorted(got) == list(range(300))
    assert peak <= 4
    listener.stop()
    await asyncio.wait_for(task, 10)


@pytest.mark.private_access
async def test_the_reader_hands_messages_over_and_the_pending_limits_still_apply(
    nc: NATSClient, subject: str
) -> None:
    backend = NATSCoreBackend(URL, buffer_size=2, pending_msgs_limit=3)
    await backend.connect()
    consumer = backend.consumer("direct", prefetch=1)
    assert isinstance(consumer, NATSCoreConsumer)
    await consumer.start([TopicPattern.parse(subject, ".")])
    (sub,) = consumer.subscriptions
    # No queue and no task of nats-py's between its reader and the consumer.
    assert sub._cb is None and sub._wait_for_msgs_task is None
    for i in range(8):  # nobody takes them: 2 buffered, 3 queued, 3 dropped
        await nc.publish(subject, str(i).encode())
    await nc.flush()
    await wait_until(lambda: consumer.dropped == 3, what="3 drops")
    stream = consumer.listen()
    got = [(await asyncio.wait_for(anext(stream), 5)).payload for _ in range(5)]
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    assert sub.pending_bytes == 0  # nats-py's accounting is left balanced
    await nc.publish(subject, b"after")  # room again: nothing more is dropped
    assert (await asyncio.wait_for(anext(stream), 5)).payload == b"after"
    assert consumer.dropped == 3
    await stream.aclose()  # type: ignore[attr-defined]
    await backend.close()


async def test_dead_letters_go_to_jetstream(subject: str) -> None:
    require_broker("nats_core", 4222)
    dlq = f"core_dlq_{uuid.uuid4().hex[:8]}"
    app = App(URL, group=f"g_{uuid.uuid4().hex[:6]}", dead_letter_stream=dlq)

    stored = asyncio.Event()
    app.observer = _OnDeadLetter(stored)

    @app.handler(topic=subject, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        raise ValueError("no stock")

    await app.start()
    try:
        await app.emit(order_event(subject)(order_id=5))
        await asyncio.wait_for(stored.wait(), 10)
        (letter,) = await app.backend.dead_letters(subject)
        assert letter.payload and letter.headers["x-dispytch-error-type"] == "ValueError"
    finally:
        await app.stop()
        from tests.backends.nats_streams import delete_streams

        await delete_streams(SERVER, dlq)


class _OnDeadLetter:
    """Sets ``event`` once a dead letter was stored."""

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event

    def on_handled(self, handler: str, event: object) -> None:
        pass

    def on_dead_letter(self, message: object, failure: object) -> None:
        self.event.set()


async def test_password_never_shown() -> None:
    backend = NATSCoreBackend("nats+core://user:s3cret@127.0.0.1:1", connect_timeout=1)
    assert "s3cret" not in repr(backend)
    with pytest.raises(ConfigurationError) as caught:
        await backend.connect()
    assert "s3cret" not in str(caught.value)
    assert "nats+core://user:***@127.0.0.1:1" in str(caught.value)
