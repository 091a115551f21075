"""The memory backend's dead letters as a :class:`~dispytch.dlq.DeadLetterStore`.

Dead letters are the records of ``<topic>.dlq`` and of the groups' fallback topics
``dispytch.dlq.<group>``; removing one marks its record removed (consumers skip it).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from dispytch.dead_letter import DEAD_LETTER_FALLBACK_PREFIX, DEAD_LETTER_SUFFIX, DeadLetter
from dispytch.dlq.store import DeadLetterStore, original_topic
from dispytch.emitter.producer import Producer
from dispytch.memory.broker import MemoryBroker, Record

__all__ = ["MemoryDeadLetters"]


class MemoryDeadLetters(DeadLetterStore):
    """Dead letters of a :class:`~dispytch.memory.MemoryBroker`."""

    removal = "the record is marked removed (consumers skip it)"

    def __init__(
        self, broker: MemoryBroker, producer: Producer | None, group: str | None = None
    ) -> None:
        super().__init__(producer, group)
        self.broker = broker

    async def scan(self, topics: frozenset[str] = frozenset()) -> AsyncGenerator[DeadLetter, None]:
        for record in self.broker.dead_letter_records():
            if record.removed:  # removed while this scan ran
                continue
            if record.topic.startswith(DEAD_LETTER_FALLBACK_PREFIX):
                topic = original_topic(record.headers)
            else:
                topic = record.topic[: -len(DEAD_LETTER_SUFFIX)]
            if topics and topic not in topics:
                continue
            yield DeadLetter(
                topic,
                record.payload,
                record.headers,
                record.key,
                record.topic,
                str(record.offset),
                record,
            )

    async def remove(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            record: Record = letter.handle
            self.broker.remove(record)
