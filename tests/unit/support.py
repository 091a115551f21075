"""Shared helpers for the unit tests: envelopes as 0.10 wrote them, a recording consumer on the
memory broker, and a context manager that runs a listener and stops it with a deadline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any

from dispytch.events import EventBase
from dispytch.handler import HandlerGroup
from dispytch.listener.consumer import Failure, Message
from dispytch.listener.listener import EventListener
from dispytch.memory import MemoryBroker, MemoryConsumer
from dispytch.routing import TopicPattern
from dispytch.serialization.deserializer import Deserializer
from tests.helpers import wait_until

GROUP = "unit"


def envelope(
    event_type: str, body: dict[str, Any], *, id_: str = "evt-1", timestamp: int = 1
) -> bytes:
    """Bytes of an envelope exactly as Dispytch 0.10 wrote them (``json.dumps`` defaults)."""
    return json.dumps(
        {"id": id_, "type": event_type, "body": body, "timestamp": timestamp}
    ).encode()


class RecordingConsumer(MemoryConsumer):
    """A memory consumer that records how the listener settles each message."""

    def __init__(self, broker: MemoryBroker, group: str = GROUP, topics: Sequence[str] = ()):
        super().__init__(broker, group, topics)
        self.acked: list[Message] = []
        self.nacked: list[Message] = []
        self.dead: list[tuple[Message, Failure]] = []
        self.fetched = 0
        #: the most messages fetched and not yet settled at any moment (backpressure check)
        self.max_outstanding = 0
        #: settle calls in order: ("ack" | "nack" | "dead", message offset)
        self.log: list[tuple[str, int | None]] = []
        self.subscriptions: list[TopicPattern] = []
        self.listen_closed = False

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        self.subscriptions = list(subscriptions)
        await super().start(subscriptions)

    async def listen(self) -> AsyncIterator[Message]:
        try:
            async with aclosing(super().listen()) as stream:
                async for message in stream:
                    self.fetched += 1
                    self.max_outstanding = max(self.max_outstanding, self.fetched - self.settled)
                    yield message
        finally:
            self.listen_closed = True

    @property
    def settled(self) -> int:
        return len(self.acked) + len(self.nacked)

    async def ack(self, message: Message) -> None:
        self.acked.append(message)
        self.log.append(("ack", message.offset))
        await super().ack(message)

    async def nack(self, message: Message) -> None:
        self.nacked.append(message)
        self.log.append(("nack", message.offset))
        await super().nack(message)

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        self.dead.append((message, failure))
        self.log.append(("dead", message.offset))
        return await super().dead_letter(message, failure)


def memory_listener(
    group: HandlerGroup, **options: Any
) -> tuple[MemoryBroker, RecordingConsumer, EventListener]:
    """A listener for ``group`` on a fresh memory broker, with a recording consumer."""
    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer, **options)
    listener.add_handler_group(group)
    return broker, consumer, listener


@asynccontextmanager
async def running(
    listener: EventListener, timeout: float = 10.0
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``listener.listen()`` in a task; on exit stop it and wait (with a deadline)."""
    await listener.subscribe()
    task = asyncio.create_task(listener.listen())
    try:
        yield task
    finally:
        listener.stop()
        await asyncio.wait_for(task, timeout)


async def deliver(
    group: HandlerGroup,
    messages: Iterable[tuple[str, bytes]],
    *,
    settled: int | None = None,
    deserializer: Deserializer | None = None,
    topic_delimiter: str = ":",
) -> RecordingConsumer:
    """Run a listener with ``group`` on a fresh memory broker, publish ``messages`` (topic,
    payload), wait until ``settled`` of them (default: all) are settled, stop; return the
    consumer, which recorded how each was settled."""
    messages = list(messages)
    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer, deserializer, topic_delimiter)
    listener.add_handler_group(group)
    want = len(messages) if settled is None else settled
    async with running(listener):
        for topic, payload in messages:
            broker.publish(topic, payload)
        await wait_until(lambda: consumer.settled == want, timeout=10, what=f"{want} settled")
    return consumer


Body = dict[str, Any]


class Placed(EventBase):
    """An event for the tests: ``placed`` on topic ``orders``."""

    __topic__ = "orders"
    __event_type__ = "placed"
    n: int = 0
