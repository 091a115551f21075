# queue_backend.py: an in-process broker, and the Dispytch backend for it (docs/backends/custom.md)
import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Mapping, Sequence

from pydantic import BaseModel

from dispytch.dead_letter import DeadLetter, dead_letter_topic
from dispytch.routing import TopicPattern
from dispytch.seam import Backend, Consumer, Failure, Message, Producer


@dataclasses.dataclass
class Record:
    topic: str
    payload: bytes
    key: bytes | None
    headers: dict[str, str]
    deliveries: int = 0


class QueueBroker:
    """Topics keep every record; each consumer group has one queue its consumers share."""

    def __init__(self) -> None:
        self.topics: dict[str, list[Record]] = {}
        self.groups: dict[str, tuple[list[re.Pattern[str]], asyncio.Queue[Record]]] = {}

    def publish(
        self, topic: str, payload: bytes, key: bytes | None, headers: Mapping[str, str]
    ) -> None:
        record = Record(topic, payload, key, dict(headers))
        self.topics.setdefault(topic, []).append(record)
        for patterns, queue in self.groups.values():
            if any(p.match(topic) for p in patterns):
                queue.put_nowait(dataclasses.replace(record))  # a copy per group

    def join(self, group: str, patterns: Sequence[str]) -> asyncio.Queue[Record]:
        known, queue = self.groups.setdefault(group, ([], asyncio.Queue()))
        known.extend(re.compile(p) for p in patterns)
        return queue


class QueueProducer(Producer):
    def __init__(self, broker: QueueBroker) -> None:
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
        # In process, the broker has the record once publish() returns: that is the confirm.
        # A real broker's client awaits its acknowledgement here, and raises when it fails.
        self.broker.publish(topic, payload, key, headers or {})


class QueueConsumer(Consumer):
    def __init__(self, broker: QueueBroker, group: str) -> None:
        self.broker = broker
        self.group = group
        self.queue: asyncio.Queue[Record] | None = None
        self.unsettled: dict[int, Record] = {}

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        self.queue = self.broker.join(self.group, [p.regex for p in subscriptions])

    async def listen(self) -> AsyncIterator[Message]:
        queue = self.queue or self.broker.join(self.group, [])
        while True:
            record = await queue.get()
            record.deliveries += 1
            self.unsettled[id(record)] = record
            yield Message(
                record.topic,
                record.payload,
                record.key,
                record.headers,
                delivery_attempt=record.deliveries,
                extra=record,
            )

    async def ack(self, message: Message) -> None:
        self.unsettled.pop(id(message.extra), None)

    async def nack(self, message: Message) -> None:
        record = self.unsettled.pop(id(message.extra), None)
        if record is not None and self.queue is not None:
            self.queue.put_nowait(record)  # delivered again

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        self.broker.publish(
            dead_letter_topic(message.topic), message.payload, message.key, failure.headers(message)
        )
        return True

    async def close(self) -> None:
        for record in self.unsettled.values():
            if self.queue is not None:
                self.queue.put_nowait(record)  # unsettled work goes back to the group
        self.unsettled.clear()


_BROKERS: dict[str, QueueBroker] = {}


class QueueBackend(Backend):
    """``queue://name``: backends of the same URL in one process share one broker."""

    def __init__(self, url: str = "queue://", **options: object) -> None:
        super().__init__(url, **options)
        self.broker = _BROKERS.setdefault(url, QueueBroker())
        self._producer = QueueProducer(self.broker)

    def producer(self) -> QueueProducer:
        return self._producer

    def make_consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> QueueConsumer:
        return QueueConsumer(self.broker, group)

    async def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        records = self.broker.topics.get(dead_letter_topic(topic), [])
        return [DeadLetter(topic, r.payload, r.headers, r.key) for r in records[:limit]]
