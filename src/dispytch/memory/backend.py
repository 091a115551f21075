from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from dispytch.backend import Backend
from dispytch.dead_letter import DeadLetter
from dispytch.memory.broker import MemoryBroker
from dispytch.memory.client import MemoryConsumer, MemoryProducer
from dispytch.memory.dlq import MemoryDeadLetters
from dispytch.seam import Consumer
from dispytch.topic_rules import MEMORY

__all__ = ["MemoryBackend", "shared_broker"]

_BROKERS: dict[str, MemoryBroker] = {}


def shared_broker(name: str = "") -> MemoryBroker:
    """The process-wide broker called ``name``: ``memory://name`` URLs in one process share it."""
    broker = _BROKERS.get(name)
    if broker is None:
        broker = _BROKERS[name] = MemoryBroker()
    return broker


class MemoryBackend(Backend):
    """``memory://`` (the process's default broker) or ``memory://name`` (a named one).

    Pass ``broker=MemoryBroker()`` to use a private broker instead.
    """

    topic_rules = MEMORY

    def __init__(
        self, url: str = "memory://", *, broker: MemoryBroker | None = None, **options: Any
    ):
        super().__init__(url, **options)
        self.broker = broker or shared_broker(urlsplit(url).netloc)
        self._producer = MemoryProducer(self.broker)

    def producer(self) -> MemoryProducer:
        return self._producer

    def make_consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> Consumer:
        return MemoryConsumer(self.broker, group)

    async def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        return self.broker.dead_letters(topic)[:limit]

    def dead_letter_store(self, group: str | None = None) -> MemoryDeadLetters:
        return MemoryDeadLetters(self.broker, self._producer, group)
