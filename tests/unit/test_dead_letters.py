"""Dead letters: a failing destination is retried with backoff, then the fallback is used, then
the listener stops loudly; dead letters keep the original headers and cannot be forged; the
log lines about them cannot be forged either."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from dispytch import App, Event, EventBase, EventListener, HandlerGroup
from dispytch.errors import DeadLetterError
from dispytch.listener.consumer import Failure, Message
from dispytch.memory import MemoryBackend, MemoryBroker, MemoryProducer
from dispytch.retry import RetryPolicy
from tests.helpers import wait_until
from tests.unit.support import GROUP, RecordingConsumer, envelope, running

Body = dict[str, Any]

#: Fast backoff for tests: 10 ms doubling to 40 ms, +-50 %, 4 attempts.
FAST = RetryPolicy.build(
    retries=3, retry_interval=0.01, backoff="exponential", max_retry_interval=0.04, jitter=0.5
)


class FailingStore(RecordingConsumer):
    """A memory consumer whose dead-letter destination fails ``fails`` times (-1: always),
    and whose fallback fails too when ``fallback_fails``."""

    def __init__(
        self, broker: MemoryBroker, fails: int, fallback_fails: bool = False, group: str = GROUP
    ) -> None:
        super().__init__(broker, group)
        self.fails = fails
        self.fallback_fails = fallback_fails
        self.attempts: list[float] = []
        self.fallbacks = 0

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        self.attempts.append(time.monotonic())
        if self.fails < 0 or len(self.attempts) <= self.fails:
            raise ConnectionError("dead-letter queue name too long")
        return await super().dead_letter(message, failure)

    async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool:
        self.fallbacks += 1
        if self.fallback_fails:
            raise PermissionError("fallback refused")
        return await super().dead_letter_fallback(message, failure)


def failing_group() -> HandlerGroup:
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def reject(event: Event[Body]) -> None:
        if event.body.get("fail", True):
            raise ValueError("declined")

    return group


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


async def test_failing_store_is_retried_with_backoff_then_stores(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = MemoryBroker()
    consumer = FailingStore(broker, fails=2)
    listener = EventListener(consumer, dead_letter_retry=FAST)
    listener.add_handler_group(failing_group())
    with caplog.at_level(logging.WARNING, logger="dispytch.listener"):
        async with running(listener):
            broker.publish("orders", envelope("placed", {}))
            await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert len(consumer.attempts) == 3
    assert consumer.fallbacks == 0
    assert [d.reason for d in broker.dead_letters("orders")] == ["handler"]
    assert consumer.log[-1] == ("ack", 0)
    # No hot loop: each retry waited at least the backoff's lower bound.
    gaps = [b - a for a, b in zip(consumer.attempts, consumer.attempts[1:], strict=False)]
    assert gaps[0] >= 0.005 and gaps[1] >= 0.01
    # One WARNING per failed attempt, the traceback only on the first.
    warned = warnings_about(caplog, "dead-letter destination failed")
    assert len(warned) == 2
    assert [r.exc_info is not None for r in warned] == [True, False]


async def test_always_failing_store_goes_to_the_fallback_and_the_flow_continues() -> None:
    broker = MemoryBroker()
    consumer = FailingStore(broker, fails=-1)
    listener = EventListener(consumer, dead_letter_retry=FAST)
    listener.add_handler_group(failing_group())
    async with running(listener):
        broker.publish("orders", envelope("placed", {}), key=b"k", headers={"tenant": "t1"})
        broker.publish("orders", envelope("placed", {"fail": False}), key=b"k")
        await wait_until(lambda: consumer.settled == 2, timeout=5, what="both settled")
    assert len(consumer.attempts) == FAST.attempts
    assert consumer.fallbacks == 1
    assert consumer.log[-2:] == [("ack", 0), ("ack", 1)]
    (record,) = broker.records(f"dispytch.dlq.{GROUP}")
    assert record.headers["x-dispytch-original-topic"] == "orders"
    assert record.headers["tenant"] == "t1"
    assert record.key == b"k"
    (dead,) = broker.dead_letters("orders")  # read back with the topic's other dead letters
    assert (dead.topic, dead.reason) == ("orders", "handler")


async def test_failing_fallback_stops_the_listener_without_acking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()
    group = failing_group()

    @group.handler(topic="slow", event="placed")
    async def slow(event: Event[Body]) -> None:
        started.set()
        await asyncio.sleep(30)

    broker = MemoryBroker()
    consumer = FailingStore(broker, fails=-1, fallback_fails=True)
    listener = EventListener(consumer, dead_letter_retry=FAST, shutdown_timeout=30)
    listener.add_handler_group(group)
    await listener.subscribe()
    broker.publish("slow", envelope("placed", {}))  # in flight when the listener stops
    task = asyncio.create_task(listener.listen())
    await asyncio.wait_for(started.wait(), 5)
    broker.publish("orders", envelope("placed", {}))
    expected = "could not dead-letter a message from orders"
    with pytest.raises(DeadLetterError, match=expected):
        await asyncio.wait_for(task, 5)  # not shutdown_timeout: nothing waits for work
    assert consumer.acked == []  # nothing acknowledged: the failing one, nor the in-flight one
    assert sorted(m.topic for m in consumer.nacked) == ["orders", "slow"]
    assert broker.pending(GROUP) == 2  # both go to the next consumer
    assert consumer.fallbacks == FAST.attempts
    fallback = [r for r in caplog.records if "fallback destination failed" in r.getMessage()]
    assert len(fallback) == FAST.attempts


async def test_no_fallback_at_all_stops_the_listener() -> None:
    class NoFallback(FailingStore):
        async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool:
            return False

    broker = MemoryBroker()
    consumer = NoFallback(broker, fails=-1)
    listener = EventListener(consumer, dead_letter_retry=FAST)
    listener.add_handler_group(failing_group())
    await listener.subscribe()
    broker.publish("orders", envelope("placed", {}))
    broker.publish("orders", envelope("placed", {"fail": False}))
    with pytest.raises(DeadLetterError, match="fallback: none configured"):
        await asyncio.wait_for(listener.listen(), 5)
    # The good message, handled at once, was acked; the one that could not be stored never.
    assert [m.offset for m in consumer.acked] == [1]
    assert [m.offset for m in consumer.nacked] == [0]


async def test_producer_path_falls_back_to_the_groups_topic() -> None:
    """A consumer without a destination of its own: the producer's dead_letter_topic first,
    then ``dead_letter_fallback_topic``."""

    class NoDestination(RecordingConsumer):
        async def dead_letter(self, message: Message, failure: Failure) -> bool:
            return False

        async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool:
            return False

    class RefusesDlq(MemoryProducer):
        tried: list[str] = []

        async def send(self, topic: str, payload: bytes, config: Any = None, **kw: Any) -> None:
            self.tried.append(topic)
            if topic.endswith(".dlq"):
                raise ValueError(f"topic name {topic!r} too long")
            await super().send(topic, payload, config, **kw)

    broker = MemoryBroker()
    consumer = NoDestination(broker)
    producer = RefusesDlq(broker)
    listener = EventListener(
        consumer,
        dead_letter_producer=producer,
        dead_letter_fallback_topic="dispytch.dlq.billing",
        dead_letter_retry=FAST,
    )
    listener.add_handler_group(failing_group())
    async with running(listener):
        broker.publish("orders", envelope("placed", {}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert producer.tried == ["orders.dlq"] * FAST.attempts + ["dispytch.dlq.billing"]
    (record,) = broker.records("dispytch.dlq.billing")
    assert record.headers["x-dispytch-original-topic"] == "orders"
    assert consumer.log == [("ack", 0)]


async def test_app_uses_the_backends_fallback() -> None:
    class Backend(MemoryBackend):
        def consumer(self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None):  # type: ignore[no-untyped-def]
            return FailingStore(self.broker, fails=-1, group=group)

    app = App(backend=Backend(broker=MemoryBroker()), group="billing", dead_letter_retry=FAST)
    app.add_handler_group(failing_group())

    class OrderPlaced(EventBase):
        __topic__ = "orders"
        __event_type__ = "placed"

    async with app:
        await app.emit(OrderPlaced())
        await app.backend.broker.wait_idle(5)  # type: ignore[attr-defined]
        (dead,) = await app.backend.dead_letters("orders")
    assert dead.reason == "handler"
    assert app.backend.broker.records("dispytch.dlq.billing")  # type: ignore[attr-defined]


# -- headers --------------------------------------------------------------------------------------


async def test_dead_letters_keep_original_headers_and_forged_failure_headers_are_renamed() -> None:
    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer)
    listener.add_handler_group(failing_group())
    forged = {
        "traceparent": "00-abc-def-01",
        "x-dispytch-reason": "nothing happened",
        "x-dispytch-handler": "not.me",
        "X-Dispytch-Original-Partition": "99",
        "x-dispytch-forwarded-reason": "older",
    }
    async with running(listener):
        broker.publish("orders", envelope("placed", {}), headers=forged)
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    (dead,) = broker.dead_letters("orders")
    headers = dict(dead.headers)
    assert headers["traceparent"] == "00-abc-def-01"  # original header kept
    assert headers["x-dispytch-reason"] == "handler"  # ours, not the forged one
    assert headers["x-dispytch-handler"].endswith("reject")
    assert headers["x-dispytch-original-partition"] == "0"
    assert headers["x-dispytch-forwarded-reason"] == "nothing happened"
    assert headers["x-dispytch-forwarded-handler"] == "not.me"
    assert headers["x-dispytch-forwarded-Original-Partition"] == "99"
    assert "X-Dispytch-Original-Partition" not in headers
    assert (dead.reason, dead.attempts) == ("handler", 1)


# -- log lines ------------------------------------------------------------------------------------


async def test_an_event_id_with_a_newline_forges_no_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    group = HandlerGroup()

    @group.handler(topic="orders:{kind}", event="placed", retries=1, retry_interval=0)
    async def reject(event: Event[Body]) -> None:
        raise ValueError(f"bad event {event.id}")

    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer)
    listener.add_handler_group(group)
    evil = "e1\n2030-01-01 00:00:00 CRITICAL dispytch: forged"
    with caplog.at_level(logging.DEBUG, logger="dispytch"):
        async with running(listener):
            broker.publish("orders:a", envelope("placed", {}, id_=evil))  # retried, then dead
            broker.publish("orders:a\nb", envelope("placed", {}, id_=evil))  # bad segment: dead
            await wait_until(lambda: consumer.settled == 2, timeout=5, what="settle")
    retry = [r for r in caplog.records if "retrying" in r.getMessage()]
    dead = [r for r in caplog.records if "dead-lettered message" in r.getMessage()]
    assert len(retry) == 1 and len(dead) == 2
    for record in retry + dead:
        text = record.getMessage()
        assert "\n" not in text
        assert "e1\\n2030-01-01" in text  # the id, escaped
    assert any("orders:a\\nb" in r.getMessage() for r in dead)  # the topic, escaped


async def test_a_pattern_handler_never_receives_its_own_dead_letters() -> None:
    calls: list[str] = []
    group = HandlerGroup()

    @group.handler(topic="orders:{kind}", event="placed")
    async def reject(event: Event[Body]) -> None:
        calls.append(event.topic)
        raise ValueError("declined")

    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer)
    listener.add_handler_group(group)
    async with running(listener):
        broker.publish("orders:new", envelope("placed", {}))
        await broker.wait_idle(5)  # a dead letter routed back would keep the group busy
    assert calls == ["orders:new"]  # "orders:new.dlq" matches the pattern, but is not routed
    assert [d.topic for d in broker.dead_letters()] == ["orders:new"]
