"""NATS JetStream backend against a live server (runs when DISPYTCH_BROKERS lists nats)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

import nats
import pytest
from nats.aio.client import Client as NATSClient
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from pydantic import BaseModel

from dispytch import App, Event, EventBase, EventEmitter, EventListener, TopicSegment
from dispytch.dead_letter import DeadLetter
from dispytch.emitter.producer import Outgoing, ProducerTimeout
from dispytch.errors import EmitError
from dispytch.nats import (
    DeadLetterStore,
    NATSBackend,
    NATSConsumer,
    NATSEventConfig,
    NATSProducer,
)
from dispytch.nats.consumer import NATSGroupConsumer
from dispytch.routing import TopicPattern
from tests.backends.nats_streams import delete_streams
from tests.backends.proxy import FaultyProxy
from tests.helpers import require_broker, wait_until

URL = "nats://127.0.0.1:4222"

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _nats_listed() -> None:
    require_broker("nats", 4222)


@dataclass
class Server:
    """An admin connection and the names of this test's streams (deleted afterwards)."""

    nc: NATSClient
    js: JetStreamContext
    uid: str

    @property
    def stream(self) -> str:
        return f"t_{self.uid}"

    @property
    def dlq(self) -> str:
        return f"t_{self.uid}_dlq"

    def topic(self, name: str) -> str:
        return f"t_{self.uid}_{name}"

    def backend(self, **options: object) -> NATSBackend:
        return NATSBackend(URL, stream=self.stream, dead_letter_stream=self.dlq, **options)  # type: ignore[arg-type]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    nc = await nats.connect(URL)
    state = Server(nc, nc.jetstream(), uuid.uuid4().hex[:10])
    yield state
    await nc.close()
    await delete_streams(URL, state.stream, state.dlq)


class Order(BaseModel):
    order_id: int


def order_event(topic: str, partition_key: str | None = None) -> type[EventBase]:
    class OrderPlaced(EventBase):
        __topic__ = topic
        __event_type__ = "order_placed"
        __backend_config__ = NATSEventConfig(partition_key=partition_key)
        order_id: int

    return OrderPlaced


async def test_seed_style_round_trip(server: Server) -> None:
    topic = server.topic("orders")
    js = server.js
    await js.add_stream(name=server.stream, subjects=[f"{topic}.>"])
    sub = await js.pull_subscribe(f"{topic}.*", durable="billing", stream=server.stream)
    consumer = NATSConsumer(sub, dead_letters=DeadLetterStore(js, server.dlq))
    listener = EventListener(consumer, topic_delimiter=".")
    got: list[tuple[int, str, str]] = []

    @listener.handler(topic=f"{topic}.{{region}}", event="order_placed")
    async def handle(event: Event[Order], region: Annotated[str, TopicSegment()]) -> None:
        got.append((event.body.order_id, region, event.topic))

    task = asyncio.create_task(listener.listen())
    emitter = EventEmitter(NATSProducer(js))
    await emitter.emit(order_event(f"{topic}.eu")(order_id=1))
    await wait_until(lambda: len(got) == 1, what="the event")
    listener.stop()
    await task
    assert got == [(1, "eu", f"{topic}.eu")]
    await wait_until_acked(js, server.stream, "billing")


async def wait_until_acked(js: JetStreamContext, stream: str, consumer: str) -> None:
    async def acked() -> None:
        while True:
            info = await js.consumer_info(stream, consumer)
            if info.num_ack_pending == 0 and info.num_pending == 0:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(acked(), 10)


async def test_emit_to_uncovered_subject_raises_then_subjects_option_covers_it(
    server: Server,
) -> None:
    topic = server.topic("nowhere")
    app = App(backend=server.backend())
    async with app:
        with pytest.raises(EmitError, match="subjects"):
            await app.emit(order_event(topic)(order_id=1))
    # An emit-only app lists what it publishes; the stream then stores it.
    app = App(backend=server.backend(subjects=[f"{topic}.>", topic]))
    async with app:
        await app.emit(order_event(topic)(order_id=2))
        await app.emit(order_event(f"{topic}.eu")(order_id=3))
    info = await server.js.stream_info(server.stream)
    assert info.state.messages == 2
    assert sorted(info.config.subjects or []) == sorted([topic, f"{topic}.>"])


async def test_send_many_reports_each_message_and_keeps_the_order(server: Server) -> None:
    topic = server.topic("batch")
    full = server.topic("full")
    await server.js.add_stream(name=server.stream, subjects=[topic])
    # A stream that refuses new messages once it holds two: its PubAcks carry an error.
    await server.js.add_stream(
        name=f"{server.stream}_full", subjects=[full], max_msgs=2, discard="new"
    )
    producer = NATSProducer(server.js, timeout=5)
    try:
        outgoing = [Outgoing(topic, b"%d" % i, key=b"k") for i in range(50)]
        outgoing.insert(10, Outgoing(server.topic("uncaptured"), b"lost"))
        outgoing.insert(20, Outgoing(topic, b"x" * (server.nc.max_payload + 1)))
        outgoing += [Outgoing(full, b"a"), Outgoing(full, b"b"), Outgoing(full, b"c")]
        results = await producer.send_many(outgoing)
        assert isinstance(results[10], EmitError) and "no JetStream stream" in str(results[10])
        assert isinstance(results[20], EmitError) and "payload" in str(results[20])
        assert results[-3:-1] == [None, None]
        assert isinstance(results[-1], EmitError) and "refused" in str(results[-1])
        assert [r for i, r in enumerate(results[:-3]) if i not in (10, 20)] == [None] * 50
        sub = await server.js.pull_subscribe(topic, durable="reader", stream=server.stream)
        got: list[bytes] = []
        while len(got) < 50:
            for msg in await sub.fetch(50, timeout=5):
                got.append(msg.data)
                assert msg.headers and msg.headers["x-dispytch-key"] == "k"
        assert got == [b"%d" % i for i in range(50)]
        # A single send goes the same way.
        with pytest.raises(EmitError, match="refused"):
            await producer.send(full, b"d")
    finally:
        await producer.close()
        await delete_streams(URL, f"{server.stream}_full")


async def test_pubacks_that_do_not_come_time_out_and_late_ones_are_dropped(
    server: Server,
) -> None:
    topic = server.topic("late")
    await server.js.add_stream(name=server.stream, subjects=[topic])
    async with FaultyProxy(4222) as proxy:
        nc = await nats.connect(f"nats://127.0.0.1:{proxy.port}")
        producer = NATSProducer(nc.jetstream(), timeout=0.5)
        try:
            await producer.send(topic, b"first")
            proxy.stall()
            results = await producer.send_many([Outgoing(topic, b"a"), Outgoing(topic, b"b")])
            assert all(isinstance(r, ProducerTimeout) for r in results), results
            proxy.resume()  # the late PubAcks arrive now, and find nobody waiting
            assert await producer.send_many([Outgoing(topic, b"c")]) == [None]
        finally:
            await producer.close()
            await nc.close()
    info = await server.js.stream_info(server.stream)
    assert info.state.messages == 4  # the timed-out ones may well be stored: they were


async def _group_consumer(
    backend: NATSBackend, group: str, topic: str, prefetch: int = 1
) -> NATSGroupConsumer:
    consumer = backend.consumer(group, prefetch=prefetch)
    assert isinstance(consumer, NATSGroupConsumer)
    await consumer.start([TopicPattern.parse(topic, ".")])
    return consumer


async def test_nack_redelivers_with_attempt_two(server: Server) -> None:
    topic = server.topic("nak")
    backend = server.backend()
    await backend.connect()
    try:
        consumer = await _group_consumer(backend, "g", topic)
        await backend.producer().send(topic, b"payload", key=b"k1")
        stream = consumer.listen()
        first = await asyncio.wait_for(anext(stream), 10)
        assert (first.delivery_attempt, first.key, first.payload) == (1, b"k1", b"payload")
        await consumer.nack(first)
        second = await asyncio.wait_for(anext(stream), 10)
        assert second.offset == first.offset
        assert second.delivery_attempt == 2
        await consumer.ack(second)
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await backend.close()


async def test_unacked_message_of_a_dead_consumer_is_redelivered_after_ack_wait(
    server: Server,
) -> None:
    topic = server.topic("dies")
    first_process = server.backend(ack_wait=1.0)
    await first_process.connect()
    consumer = await _group_consumer(first_process, "g", topic)
    await first_process.producer().send(topic, b"work")
    stream = consumer.listen()
    held = await asyncio.wait_for(anext(stream), 10)
    assert held.delivery_attempt == 1
    # The process goes away holding the message: no ack, no nak.
    await stream.aclose()  # type: ignore[attr-defined]
    await first_process.close()
    died_at = time.monotonic()

    second_process = server.backend(ack_wait=1.0)
    await second_process.connect()
    try:
        consumer = await _group_consumer(second_process, "g", topic)
        stream = consumer.listen()
        again = await asyncio.wait_for(anext(stream), 10)
        waited = time.monotonic() - died_at
        assert again.offset == held.offset
        assert again.delivery_attempt == 2
        assert waited >= 0.5, f"redelivered after {waited:.2f}s, before ack_wait"
        await consumer.ack(again)
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await second_process.close()


async def test_dead_letters_keep_bytes_key_and_failure_headers(server: Server) -> None:
    topic = server.topic("broken")
    app = App(backend=server.backend(), group="g", shutdown_timeout=5.0)

    @app.handler(topic=topic, event="order_placed", retries=1, retry_interval=0.01)
    async def broken(event: Event[Order]) -> None:
        raise ValueError(f"cannot place order {event.body.order_id}\nsecond line")

    async with app:
        sent = order_event(topic, partition_key="customer-7")(order_id=9)
        await app.emit(sent)

        async def dead_letter_arrives() -> list[DeadLetter]:
            while True:
                found = await app.backend.dead_letters(topic)
                if found:
                    return found
                await asyncio.sleep(0.02)

        dead = await asyncio.wait_for(dead_letter_arrives(), 20)
    assert len(dead) == 1
    letter = dead[0]
    assert letter.topic == topic
    assert sent.id.encode() in letter.payload
    assert letter.key == b"customer-7"
    assert letter.reason == "handler"
    assert letter.attempts == 2
    assert letter.error == "ValueError: cannot place order 9 second line"
    assert letter.headers["x-dispytch-original-topic"] == topic
    assert int(letter.headers["x-dispytch-original-offset"]) >= 1
    # Stored in the dead-letter stream, away from the event stream's consumers.
    msg = await server.js.get_last_msg(server.dlq, f"{server.dlq}.{topic}")
    assert msg.data == letter.payload
    # The original was acked after the dead letter was stored: nothing is redelivered.
    info = await server.js.stream_info(server.stream)
    assert info.state.messages == 1
    # readable again after close, on a short-lived connection
    assert len(await app.backend.dead_letters(topic)) == 1


async def test_overlapping_patterns_deliver_each_event_once(server: Server) -> None:
    base = server.topic("ov")
    got: list[str] = []
    app = App(backend=server.backend(), group="g", shutdown_timeout=5.0)

    @app.handler(topic=f"{base}.{{a}}.c", event="order_placed")
    async def first(event: Event[Order]) -> None:
        got.append("first")

    @app.handler(topic=f"{base}.b.{{c}}", event="order_placed")
    async def second(event: Event[Order]) -> None:
        got.append("second")

    async with app:
        await app.emit(order_event(f"{base}.b.c")(order_id=1))
        await app.emit(order_event(f"{base}.x.c")(order_id=2))
        await wait_until(lambda: len(got) >= 3, what="three handler runs")
        info = await server.js.stream_info(server.stream)
        assert info.config.subjects == [f"{base}.*.*"]  # merged: JetStream forbids overlaps
        # Every delivery settled (acked after its handlers ran): a duplicate would show now.
        for name in [c.name for c in await server.js.consumers_info(server.stream)]:
            await wait_until_acked(server.js, server.stream, name)
    assert sorted(got) == ["first", "first", "second"]


async def test_handler_longer_than_ack_wait_runs_once_and_is_acked(server: Server) -> None:
    """Held messages are reported in progress: JetStream does not redeliver them meanwhile."""
    topic = server.topic("slow")
    starts: list[int] = []
    app = App(
        backend=server.backend(ack_wait=1.0), group="g", max_deliveries=2, shutdown_timeout=10
    )

    @app.handler(topic=topic, event="order_placed")
    async def slow(event: Event[Order]) -> None:
        starts.append(event.body.order_id)
        await asyncio.sleep(3.0)  # three ack_waits

    async with app:
        await app.emit(order_event(topic)(order_id=1))
        await wait_until(lambda: bool(starts), what="the slow handler")
        name = (await server.js.consumers_info(server.stream))[0].name
        await wait_until_acked(server.js, server.stream, name)
        info = await server.js.consumer_info(server.stream, name)
        assert info.delivered.consumer_seq == 1  # counts redeliveries too
        assert await app.backend.dead_letters(topic) == []
    assert starts == [1]


async def test_seed_style_consumer_reads_ack_wait_and_keeps_held_messages(
    server: Server,
) -> None:
    """Without ``ack_wait=``, the consumer's own ``ack_wait`` sets the in-progress period."""
    topic = server.topic("seedslow")
    js = server.js
    await js.add_stream(name=server.stream, subjects=[topic])
    sub = await js.pull_subscribe(
        topic, durable="slow", stream=server.stream, config=ConsumerConfig(ack_wait=1.0)
    )
    consumer = NATSConsumer(sub)
    await NATSProducer(js).send(topic, b"work")
    stream = consumer.listen()
    held = await asyncio.wait_for(anext(stream), 10)
    assert held.delivery_attempt == 1
    # Nothing else is ever fetched while the message is held for three ack_waits.
    again = asyncio.ensure_future(anext(stream))
    done, _ = await asyncio.wait({again}, timeout=3.0)
    await consumer.ack(held)
    await consumer.close()
    assert not done, "delivered again while held"
    with pytest.raises(StopAsyncIteration):  # the stream ends once closed
        await asyncio.wait_for(again, 10)
    await wait_until_acked(js, server.stream, "slow")
    info = await js.consumer_info(server.stream, "slow")
    assert info.delivered.consumer_seq == 1  # counts redeliveries too


async def test_free_slots_are_refilled_while_slow_handlers_run(server: Server) -> None:
    """The consumer fetches again as soon as there is room, not once half its budget is
    free: with 5 of 8 slots busy, 3 more events still start."""
    topic = server.topic("refill")
    window = 8
    running: set[int] = set()
    release = asyncio.Event()
    app = App(
        backend=server.backend(),
        group="g",
        concurrency=window,
        ordering="none",
        shutdown_timeout=10,
    )

    @app.handler(topic=topic, event="order_placed")
    async def slow(event: Event[Order]) -> None:
        running.add(event.body.order_id)
        await release.wait()

    def started(count: int) -> Callable[[], bool]:
        return lambda: len(running) == count

    event = order_event(topic)
    async with app:
        try:
            # One at a time: each fetch comes back short, leaving 5 of 8 slots busy.
            for i in range(5):
                await app.emit(event(order_id=i))
                await wait_until(started(i + 1), what=f"handler {i}")
            for i in range(5, window):
                await app.emit(event(order_id=i))
            await wait_until(started(window), what="every slot busy")
        finally:
            release.set()
