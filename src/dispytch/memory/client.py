from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence

from pydantic import BaseModel

from dispytch.broker_retries import retried_message, retry_destination, retry_headers
from dispytch.dead_letter import DEAD_LETTER_SUFFIX, fallback_topic
from dispytch.emitter.producer import Outgoing, Producer
from dispytch.listener.consumer import Consumer, Failure, Message, RetryLater
from dispytch.memory.broker import MemoryBroker, Record
from dispytch.routing import TopicPattern
from dispytch.topic_rules import MEMORY

__all__ = ["MemoryConsumer", "MemoryProducer"]


class MemoryProducer(Producer):
    """Publishes into a :class:`MemoryBroker`; the broker's 'confirm' is immediate."""

    topic_rules = MEMORY

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None:
        self.broker.publish(topic, payload, key, headers)

    async def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        publish = self.broker.publish
        for m in messages:
            publish(m.topic, m.payload, m.key, m.headers)
        return [None] * len(messages)


class MemoryConsumer(Consumer):
    """One consumer of a consumer group on a :class:`MemoryBroker`.

    ``topics`` subscribes seed style; with none, :meth:`start` subscribes to what the listener's
    handlers need.

    Broker-delayed retries wait in the broker (:meth:`MemoryBroker.publish_later`) and come
    back through the group's topic ``dispytch.retry.<group>``.
    """

    supports_broker_retries = True

    def __init__(self, broker: MemoryBroker, group: str = "default", topics: Sequence[str] = ()):
        self.broker = broker
        self.group = group
        self._unacked: dict[tuple[str, int], Record] = {}
        self._closed = False
        self._retries = retry_destination(group)
        if topics:
            broker.subscribe(group, [TopicPattern(t, "", ()) for t in topics])

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        self.broker.subscribe(self.group, subscriptions)

    def use_broker_retries(self, delays: Sequence[float] = ()) -> None:
        self.broker.subscribe(self.group, [TopicPattern(self._retries, "", ())])

    async def listen(self) -> AsyncIterator[Message]:
        retries = self._retries
        while not self._closed:
            record, attempt = await self.broker.fetch(self.group)
            self._unacked[(record.topic, record.offset)] = record
            message = Message(
                topic=record.topic,
                payload=record.payload,
                key=record.key,
                headers=record.headers,
                delivery_attempt=attempt,
                partition=0,
                offset=record.offset,
                extra=record,
            )
            yield message if record.topic != retries else retried_message(message)

    def _settle(self, message: Message, redeliver: bool) -> None:
        record = message.extra
        if not isinstance(record, Record):
            return
        if self._unacked.pop((record.topic, record.offset), None) is not None:
            self.broker.settle(self.group, record, redeliver=redeliver)

    async def retry_later(self, message: Message, retries: Sequence[RetryLater]) -> None:
        """Publish a copy per retry to ``dispytch.retry.<group>`` after its delay; ack."""
        now = time.time()
        for retry in retries:
            self.broker.publish_later(
                retry.delay,
                self._retries,
                message.payload,
                message.key,
                retry_headers(message, retry, int((now + retry.delay) * 1000)),
            )
        await self.ack(message)

    async def ack(self, message: Message) -> None:
        self._settle(message, redeliver=False)

    async def nack(self, message: Message) -> None:
        self._settle(message, redeliver=True)

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        """Publish the original bytes, key and headers plus the failure headers to
        ``{topic}.dlq``."""
        self.broker.publish(
            message.topic + DEAD_LETTER_SUFFIX,
            message.payload,
            message.key,
            failure.headers(message),
        )
        return True

    async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool:
        """Store the dead letter in the group's fallback topic, ``dispytch.dlq.<group>``."""
        self.broker.publish(
            fallback_topic(self.group), message.payload, message.key, failure.headers(message)
        )
        return True

    async def lag(self) -> dict[str, int]:
        """Records of each topic the group has not read yet."""
        return self.broker.lag(self.group)

    async def close(self) -> None:
        """Hand every unacked message back to the group, as a broker does when a client leaves."""
        self._closed = True
        for record in list(self._unacked.values()):
            self.broker.settle(self.group, record, redeliver=True)
        self._unacked.clear()
