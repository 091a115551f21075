"""How the listener settles messages, bounds concurrency, orders work and shuts down, on the
memory backend and on hand-written seed-style consumers."""

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import pytest

from dispytch import Dependency, Event, EventListener, HandlerGroup, ListenerError
from dispytch.listener.consumer import Consumer, Failure, Message
from dispytch.memory import MemoryBroker, MemoryProducer
from dispytch.routing import TopicPattern
from tests.helpers import wait_until
from tests.unit.support import GROUP, RecordingConsumer, envelope, memory_listener, running

Body = dict[str, Any]


setup = memory_listener


# -- settle outcomes ------------------------------------------------------------------------------


async def test_success_is_acked() -> None:
    got: list[Event[Body]] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        got.append(event)

    broker, consumer, listener = setup(group)
    async with running(listener):
        broker.publish("orders", envelope("placed", {"n": 1}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert consumer.log == [("ack", 0)]
    assert [e.body for e in got] == [{"n": 1}]
    assert broker.pending() == 0
    assert broker.dead_letters() == []


async def test_failure_after_retries_is_dead_lettered_with_headers_then_acked() -> None:
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed", retries=1, retry_interval=0)
    async def charge(event: Event[Body]) -> None:
        raise RuntimeError("card declined")

    broker, consumer, listener = setup(group)
    payload = envelope("placed", {"n": 1})
    async with running(listener):
        broker.publish("orders", payload, key=b"k1")
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert consumer.log == [("dead", 0), ("ack", 0)]  # never a silent ack
    (dead,) = broker.dead_letters("orders")
    assert dead.payload == payload
    assert dead.key == b"k1"
    headers = dict(dead.headers)
    assert int(headers.pop("x-dispytch-failed-at")) > 0
    assert headers == {
        "x-dispytch-reason": "handler",
        "x-dispytch-error-type": "RuntimeError",
        "x-dispytch-error-message": "card declined",
        "x-dispytch-attempts": "2",
        "x-dispytch-original-topic": "orders",
        "x-dispytch-handler": charge.__qualname__,
        "x-dispytch-original-partition": "0",
        "x-dispytch-original-offset": "0",
    }
    assert (dead.reason, dead.handler, dead.attempts) == ("handler", charge.__qualname__, 2)


async def test_invalid_body_is_dead_lettered_as_validation() -> None:
    from pydantic import BaseModel

    class Order(BaseModel):
        n: int

    calls = 0
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed", retries=3, retry_interval=0)
    async def handle(event: Event[Order]) -> None:
        nonlocal calls
        calls += 1

    broker, consumer, listener = setup(group)
    async with running(listener):
        broker.publish("orders", envelope("placed", {"n": "many"}))
        broker.publish("orders", envelope("placed", {"n": 2}))
        await wait_until(lambda: consumer.settled == 2, timeout=5, what="settle")
    assert calls == 1
    assert [(f.reason, f.attempts) for _, f in consumer.dead] == [("validation", 1)]


async def test_bad_payload_is_dead_lettered_and_the_loop_keeps_going() -> None:
    got: list[int] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        got.append(event.body["n"])

    broker, consumer, listener = setup(group)
    async with running(listener):
        broker.publish("orders", b"\x00 not an envelope")
        broker.publish("orders", envelope("placed", {"n": 1}))
        await wait_until(lambda: consumer.settled == 2, timeout=5, what="settle")
    assert got == [1]
    assert consumer.log == [("dead", 0), ("ack", 0), ("ack", 1)]
    assert [d.reason for d in broker.dead_letters("orders")] == ["decode"]


async def test_unknown_event_type_is_acked_and_not_dead_lettered() -> None:
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        raise AssertionError("must not run")

    broker, consumer, listener = setup(group)
    async with running(listener):
        broker.publish("orders", envelope("refunded", {"n": 1}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert consumer.log == [("ack", 0)]
    assert broker.dead_letters() == []


async def test_several_handlers_ack_only_if_all_succeed() -> None:
    ran: list[str] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def audit(event: Event[Body]) -> None:
        ran.append(f"audit {event.body['n']}")

    @group.handler(topic="orders", event="placed")
    async def charge(event: Event[Body]) -> None:
        ran.append(f"charge {event.body['n']}")
        if event.body["n"] == 2:
            raise ValueError("declined")

    broker, consumer, listener = setup(group)
    async with running(listener):
        broker.publish("orders", envelope("placed", {"n": 1}))
        broker.publish("orders", envelope("placed", {"n": 2}))
        await wait_until(lambda: consumer.settled == 2, timeout=5, what="settle")
    assert sorted(ran) == ["audit 1", "audit 2", "charge 1", "charge 2"]
    assert sorted(consumer.log) == [("ack", 0), ("ack", 1), ("dead", 1)]
    (dead,) = broker.dead_letters("orders")
    assert dead.handler == charge.__qualname__


async def test_observer_sees_handled_and_dead_lettered() -> None:
    seen: list[tuple[str, Any]] = []

    class Observer:
        def on_handled(self, handler: str, event: Event[Any]) -> None:
            seen.append(("handled", event.body))

        def on_dead_letter(self, message: Message, failure: Failure) -> None:
            seen.append(("dead", failure.reason))

    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle() -> None: ...

    broker, consumer, listener = setup(group, observer=Observer())
    async with running(listener):
        broker.publish("orders", envelope("placed", {"n": 1}))
        broker.publish("orders", b"junk")
        await wait_until(lambda: consumer.settled == 2, timeout=5, what="settle")
    assert seen == [("handled", {"n": 1}), ("dead", "decode")]


async def test_ack_failure_is_logged_and_the_loop_keeps_going() -> None:
    group = HandlerGroup()
    handled: list[int] = []

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        handled.append(event.body["n"])

    class FlakyAck(RecordingConsumer):
        async def ack(self, message: Message) -> None:
            if message.offset == 0:
                raise ConnectionError("broker gone")
            await super().ack(message)

    broker = MemoryBroker()
    consumer = FlakyAck(broker)
    listener = EventListener(consumer)
    listener.add_handler_group(group)
    async with running(listener):
        broker.publish("orders", envelope("placed", {"n": 0}))
        broker.publish("orders", envelope("placed", {"n": 1}))
        await wait_until(lambda: len(consumer.acked) == 1, timeout=5, what="second ack")
    assert handled == [0, 1]


# -- concurrency and ordering ---------------------------------------------------------------------


async def test_concurrency_is_bounded_under_a_backlog() -> None:
    in_flight = peak = 0
    held: list[int] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle() -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        held.append(listener.in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        in_flight -= 1

    broker, consumer, listener = setup(group, concurrency=8)
    for n in range(200):
        broker.publish("orders", envelope("placed", {"n": n}, id_=str(n)))
    async with running(listener):
        await wait_until(lambda: consumer.settled == 200, timeout=10, what="backlog handled")
    assert peak == 8  # ran in parallel, and never more than the bound
    assert max(held) <= 8
    assert consumer.max_outstanding <= 8  # never fetched further ahead than the bound
    assert len(consumer.acked) == 200


async def test_in_flight_returns_to_zero_when_work_settles_during_a_fetch() -> None:
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle() -> None:
        await asyncio.sleep(0)

    broker, consumer, listener = setup(group, shutdown_timeout=10)
    async with running(listener, timeout=5):
        broker.publish("orders", envelope("placed", {"n": 1}), key=b"k")
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="first")
        # The fetch loop was waiting for the next message while the first one settled.
        for n in range(3):
            broker.publish("orders", envelope("placed", {"n": n}), key=b"k")
        await wait_until(lambda: consumer.settled == 4, timeout=5, what="the rest")
        await wait_until(lambda: listener.in_flight == 0, timeout=5, what="nothing held")


class ByteCountingConsumer(RecordingConsumer):
    """Tracks the payload bytes fetched and not yet settled, and their peak."""

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__(broker)
        self.held_bytes = self.peak_bytes = 0

    async def listen(self) -> AsyncIterator[Message]:
        async for message in super().listen():
            self.held_bytes += len(message.payload)
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
            yield message

    async def ack(self, message: Message) -> None:
        self.held_bytes -= len(message.payload)
        await super().ack(message)


@pytest.mark.parametrize("bound", [10_000, None])
async def test_byte_bound_holds_at_most_the_bound_plus_one_message(bound: int | None) -> None:
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    broker = MemoryBroker()
    consumer = ByteCountingConsumer(broker)
    listener = EventListener(consumer, concurrency=64, max_buffer_bytes=bound)
    listener.add_handler_group(group)
    sizes = []
    for n in range(60):
        payload = envelope("placed", {"n": n, "pad": "x" * (500 + 37 * n)}, id_=str(n))
        sizes.append(len(payload))
        broker.publish("orders", payload)
    big = envelope("placed", {"n": 99, "pad": "y" * 30_000})  # larger than the bound alone
    broker.publish("orders", big)
    async with running(listener):
        await wait_until(lambda: consumer.settled == 61, timeout=10, what="backlog handled")
    assert len(consumer.acked) == 61  # the oversized one went through too
    if bound is None:  # the count bound alone lets far more bytes in
        assert consumer.peak_bytes > 3 * 10_000
    else:
        assert consumer.peak_bytes <= bound + len(big)
        assert consumer.max_outstanding > 1  # still in parallel under the bound


async def test_same_key_runs_in_order_and_different_keys_in_parallel() -> None:
    order: dict[str, list[int]] = defaultdict(list)
    active: dict[str, int] = defaultdict(int)
    overlaps: list[str] = []
    b_started = asyncio.Event()
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        key, n = event.body["key"], event.body["n"]
        active[key] += 1
        if active[key] > 1:
            overlaps.append(key)
        if key == "b":
            b_started.set()
        elif n == 0:
            # Only finishes if key "b" runs while key "a" is busy.
            await asyncio.wait_for(b_started.wait(), 5)
        await asyncio.sleep(0)
        order[key].append(n)
        active[key] -= 1

    broker, consumer, listener = setup(group, concurrency=16)
    for n in range(30):
        for key in ("a", "b"):
            broker.publish("orders", envelope("placed", {"key": key, "n": n}), key=key.encode())
    async with running(listener):
        await wait_until(lambda: consumer.settled == 60, timeout=10, what="all handled")
    assert consumer.dead == []
    assert overlaps == []
    assert order == {"a": list(range(30)), "b": list(range(30))}


async def test_partition_ordering_serialises_unkeyed_messages() -> None:
    active = peak = 0
    seen: list[int] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        seen.append(event.body["n"])
        active -= 1

    broker, consumer, listener = setup(group, ordering="partition", concurrency=8)
    for n in range(20):
        broker.publish("orders", envelope("placed", {"n": n}))
    async with running(listener):
        await wait_until(lambda: consumer.settled == 20, timeout=5, what="all handled")
    assert peak == 1
    assert seen == list(range(20))


async def test_ordering_none_runs_keyed_messages_in_parallel() -> None:
    active = peak = 0
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle() -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(3):
            await asyncio.sleep(0)
        active -= 1

    broker, consumer, listener = setup(group, ordering="none", concurrency=4)
    for n in range(20):
        broker.publish("orders", envelope("placed", {"n": n}), key=b"same")
    async with running(listener):
        await wait_until(lambda: consumer.settled == 20, timeout=5, what="all handled")
    assert peak == 4


# -- shutdown -------------------------------------------------------------------------------------


async def test_graceful_stop_drains_in_flight_work() -> None:
    started = asyncio.Event()
    gate = asyncio.Event()
    finished: list[int] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        started.set()
        await gate.wait()
        finished.append(event.body["n"])

    broker, consumer, listener = setup(group, shutdown_timeout=10)
    task = asyncio.create_task(listener.listen())
    broker.publish("orders", envelope("placed", {"n": 1}))
    await asyncio.wait_for(started.wait(), 5)
    listener.stop()
    await wait_until(lambda: consumer.listen_closed, timeout=5, what="fetching to stop")
    broker.publish("orders", envelope("placed", {"n": 2}))  # arrives after stop: not fetched
    assert not task.done()  # still draining the handler
    gate.set()
    await asyncio.wait_for(task, 5)
    assert finished == [1]
    assert consumer.log == [("ack", 0)]
    assert consumer.fetched == 1
    assert broker.pending(GROUP) == 1  # the late message waits for the next consumer


async def test_shutdown_timeout_nacks_and_the_group_gets_it_again() -> None:
    log: list[str] = []
    started = asyncio.Event()
    stuck = HandlerGroup()

    def resource() -> Iterator[str]:
        log.append("open")
        yield "r"
        log.append("close")

    @stuck.handler(topic="orders", event="placed")
    async def hang(r: Annotated[str, Dependency(resource)]) -> None:
        started.set()
        await asyncio.Event().wait()  # never finishes

    broker, first, listener = setup(stuck, shutdown_timeout=0.05)
    task = asyncio.create_task(listener.listen())
    broker.publish("orders", envelope("placed", {"n": 1}), key=b"k")
    broker.publish("orders", envelope("placed", {"n": 2}), key=b"k")  # queued behind it
    await asyncio.wait_for(started.wait(), 5)
    listener.stop()
    await asyncio.wait_for(task, 5)
    assert first.acked == []
    assert sorted(first.log) == [("nack", 0), ("nack", 1)]
    assert log == ["open", "close"]  # the cancelled handler's dependency was cleaned up

    got: list[tuple[int, int]] = []
    healthy = HandlerGroup()

    @healthy.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        got.append(event.body["n"])

    second = RecordingConsumer(broker)  # the next consumer of the same group
    listener2 = EventListener(second)
    listener2.add_handler_group(healthy)
    async with running(listener2):
        await wait_until(lambda: second.settled == 2, timeout=5, what="redelivery")
    assert got == [1, 2]  # redelivered, still in key order
    assert [m.delivery_attempt for m in second.acked] == [2, 2]


@pytest.mark.parametrize(("redeliveries", "reason"), [(1, None), (2, "redelivery")])
async def test_max_deliveries(redeliveries: int, reason: str | None) -> None:
    calls = 0
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle() -> None:
        nonlocal calls
        calls += 1

    broker, consumer, listener = setup(group, max_deliveries=2)
    broker.subscribe(GROUP, [TopicPattern.parse("orders")])
    broker.publish("orders", envelope("placed", {"n": 1}))
    for _ in range(redeliveries):  # a consumer took it and died each time
        record, _ = await broker.fetch(GROUP)
        broker.settle(GROUP, record, redeliver=True)
    async with running(listener):
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    if reason is None:
        assert (calls, consumer.dead) == (1, [])
    else:
        assert calls == 0
        (failure,) = [f for _, f in consumer.dead]
        assert (failure.reason, failure.attempts, failure.error_type) == (
            "redelivery",
            3,
            "TooManyDeliveries",
        )
        assert broker.dead_letters("orders")[0].reason == "redelivery"
    assert consumer.log[-1] == ("ack", 0)


# -- seed-style consumers -------------------------------------------------------------------------


class SeedConsumer(Consumer):
    """What a user of the seed wrote: listen() and a sync ack(), nothing else."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.acked: list[Message] = []

    async def listen(self) -> AsyncIterator[Message]:
        for message in self.messages:
            yield message

    def ack(self, message: Message) -> None:  # type: ignore[override]
        self.acked.append(message)


class DuckConsumer:
    """Not even a Consumer subclass: only listen() and a sync ack()."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.acked: list[Message] = []

    async def listen(self) -> AsyncIterator[Message]:
        for message in self.messages:
            yield message

    def ack(self, message: Message) -> None:
        self.acked.append(message)


@pytest.mark.parametrize("consumer_class", [SeedConsumer, DuckConsumer])
async def test_seed_style_consumer(consumer_class: type[Any]) -> None:
    got: list[int] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        if event.body["n"] == 2:
            raise RuntimeError("declined")
        got.append(event.body["n"])

    broker = MemoryBroker()
    messages = [
        Message("orders", envelope("placed", {"n": 1})),
        Message("orders", envelope("placed", {"n": 2})),
        Message("orders", b"junk"),
        Message("orders", envelope("placed", {"n": 3})),
    ]
    consumer = consumer_class(messages)
    listener = EventListener(consumer, dead_letter_producer=MemoryProducer(broker))
    listener.add_handler_group(group)
    await asyncio.wait_for(listener.listen(), 5)  # returns when the consumer's stream ends
    assert got == [1, 3]
    assert sorted(consumer.acked, key=messages.index) == messages  # each settled once
    assert len(consumer.acked) == 4
    dead = broker.dead_letters("orders")
    assert sorted(d.reason for d in dead) == ["decode", "handler"]
    assert {d.payload for d in dead} == {messages[1].payload, b"junk"}


def test_a_seed_style_consumer_is_adapted_once() -> None:
    from dispytch import RegistrationError
    from dispytch.listener.adapter import SeedConsumer, as_consumer

    duck = DuckConsumer([])
    adapted = as_consumer(duck)
    assert isinstance(adapted, SeedConsumer) and adapted.inner is duck
    native = RecordingConsumer(MemoryBroker())
    assert as_consumer(native) is native  # a full Consumer is used as it is
    with pytest.raises(RegistrationError, match=r"has no listen or ack\(\)"):
        EventListener(object())  # type: ignore[arg-type]


async def test_dead_letter_producer_is_used_when_the_consumer_has_no_destination() -> None:
    class NoDestination(RecordingConsumer):
        async def dead_letter(self, message: Message, failure: Failure) -> bool:
            await super().dead_letter(message, failure)  # records the call
            return False

    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle() -> None:
        raise RuntimeError("no")

    broker = MemoryBroker()
    consumer = NoDestination(broker)
    elsewhere = MemoryBroker()
    listener = EventListener(
        consumer,
        dead_letter_producer=MemoryProducer(elsewhere),
        dead_letter_topic="dead.{topic}",
    )
    listener.add_handler_group(group)
    async with running(listener):
        broker.publish("orders", envelope("placed", {}), key=b"k")
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    (record,) = elsewhere.records("dead.orders")
    assert record.key == b"k"
    assert record.headers["x-dispytch-reason"] == "handler"
    assert consumer.log == [("dead", 0), ("ack", 0)]


# -- misuse ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency must be >= 1"),
        ({"ordering": "random"}, "ordering must be"),
        ({"dead_letter_topic": "dlq"}, "must contain '{topic}'"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    from dispytch import RegistrationError

    with pytest.raises(RegistrationError, match=message):
        EventListener(RecordingConsumer(MemoryBroker()), **options)


async def test_listen_twice_is_refused() -> None:
    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer)

    @listener.handler(topic="orders", event="placed")
    async def handle() -> None: ...

    async with running(listener):
        broker.publish("orders", envelope("placed", {}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="listener running")
        with pytest.raises(ListenerError, match="already listening"):
            await listener.listen()
        with pytest.raises(ListenerError, match="before listen"):
            listener.add_handler_group(HandlerGroup())


async def test_listener_handler_decorator() -> None:
    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer)
    got: list[Any] = []

    @listener.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        got.append(event.body)

    async with running(listener):
        broker.publish("orders", envelope("placed", {"n": 1}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert got == [{"n": 1}]
