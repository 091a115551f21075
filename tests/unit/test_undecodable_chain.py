"""A message whose broker metadata the adapter could not decode goes through the listener's one
dead-letter chain (retries with backoff, the fallback, one log line, the middleware's outcome),
like every other failure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dispytch import Event, EventListener, HandlerGroup
from dispytch.errors import DeadLetterError
from dispytch.memory import MemoryBroker, MemoryProducer
from dispytch.middleware import ConsumeContext, Middleware
from dispytch.poison import UNDECODABLE_HEADER, Undecodable
from dispytch.retry import RetryPolicy
from dispytch.seam import Consumer, Failure, Message
from tests.helpers import wait_until
from tests.unit.support import envelope, running

FAST = RetryPolicy.build(
    retries=3, retry_interval=0.01, backoff="exponential", max_retry_interval=0.04, jitter=0.5
)


def poisoned(topic: str = "orders") -> Message:
    """What an adapter hands over for a delivery whose topic bytes are not UTF-8: a payload a
    handler of ``orders`` would take, were it not marked."""
    return Message(
        topic,
        envelope("placed", {}),
        delivery_attempt=2,
        undecodable=Undecodable(("topic",), "the channel name is not UTF-8", {"x-raw": "/w=="}),
    )


class Feed(Consumer):
    """Yields the given messages; a dead-letter destination that fails ``fails`` times."""

    def __init__(self, *messages: Message, fails: int = 0, destination: bool = True) -> None:
        self.messages = list(messages)
        self.fails = fails
        self.destination = destination
        self.attempts: list[float] = []
        self.acked: list[Message] = []
        self.stored: list[tuple[Message, Failure]] = []

    async def listen(self) -> AsyncIterator[Message]:
        for message in self.messages:
            yield message
        await asyncio.Event().wait()

    async def ack(self, message: Message) -> None:
        self.acked.append(message)

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        if not self.destination:
            return False
        self.attempts.append(time.monotonic())
        if self.fails < 0 or len(self.attempts) <= self.fails:
            raise ConnectionError("dead-letter stream refused")
        self.stored.append((message, failure))
        return True


def handlers(calls: list[Any]) -> HandlerGroup:
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def placed(event: Event[dict[str, Any]]) -> None:
        calls.append(event)

    return group


async def test_it_is_dead_lettered_with_the_listeners_retries_and_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[Any] = []
    consumer = Feed(poisoned(), fails=2)
    listener = EventListener(consumer, dead_letter_retry=FAST)
    listener.add_handler_group(handlers(calls))
    with caplog.at_level(logging.WARNING, logger="dispytch.listener"):
        async with running(listener):
            await wait_until(lambda: consumer.acked, what="the ack after the dead letter")
    assert calls == []  # no handler saw it
    [(_, failure)] = consumer.stored
    assert (failure.reason, failure.error_type, failure.attempts) == (
        "decode",
        "UndecodableMetadata",
        2,
    )
    assert len(consumer.attempts) == 3  # two refusals, retried with backoff
    assert consumer.attempts[1] - consumer.attempts[0] >= 0.004
    lines = [r.getMessage() for r in caplog.records if r.name == "dispytch.listener"]
    assert sum("dead-letter destination failed" in line for line in lines) == 2
    assert any(line.startswith("dead-lettered message from orders") for line in lines)


async def test_the_consume_middleware_sees_it_dead_lettered() -> None:
    seen: list[ConsumeContext] = []

    class Watch(Middleware):
        async def consume(self, context: ConsumeContext, call_next: Any) -> None:
            await call_next(context)
            seen.append(context)

    consumer = Feed(poisoned())
    listener = EventListener(consumer, middleware=[Watch()])
    listener.add_handler_group(handlers([]))
    async with running(listener):
        await wait_until(lambda: seen, what="the consume scope")
    assert seen[0].outcome == "dead_lettered"
    assert seen[0].failure is not None and seen[0].failure.reason == "decode"


async def test_an_unreadable_topic_goes_to_the_fallback_topic_not_to_its_dlq() -> None:
    broker = MemoryBroker()
    consumer = Feed(poisoned("orders\\xff"), destination=False)
    listener = EventListener(
        consumer,
        dead_letter_producer=MemoryProducer(broker),
        dead_letter_fallback_topic="dispytch.dlq.unit",
    )
    listener.add_handler_group(handlers([]))
    async with running(listener):
        await wait_until(lambda: consumer.acked, what="the ack")
    assert not broker.records("orders\\xff.dlq")
    [record] = broker.records("dispytch.dlq.unit")
    assert record.headers[UNDECODABLE_HEADER] == "topic"
    assert record.headers["x-raw"] == "/w=="
    assert record.headers["x-dispytch-reason"] == "decode"


async def test_when_no_destination_takes_it_the_listener_stops_without_acking() -> None:
    consumer = Feed(poisoned(), fails=-1)
    listener = EventListener(consumer, dead_letter_retry=FAST)
    listener.add_handler_group(handlers([]))
    await listener.subscribe()
    with pytest.raises(DeadLetterError):
        await asyncio.wait_for(listener.listen(), 10)
    assert consumer.acked == []
