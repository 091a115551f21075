"""Kafka dead letters as a :class:`~dispytch.dlq.DeadLetterStore`.

Dead letters are records of ``<topic>.dlq`` and of the groups' fallback topics
``dispytch.dlq.<group>`` (see :mod:`dispytch.kafka.topics`). A Kafka topic is a log: a record
cannot be taken out of the middle of it. So "removed" is a mark, kept where Kafka keeps a
reader's progress: the **committed offsets of consumer group** ``dispytch.dlq-replay``, one per
dead-letter partition. Everything before the committed offset is removed; dead letters removed
beyond it (a filtered replay or purge leaves others in between) are listed in the commit's
metadata as offset ranges, and the offset moves up over them as soon as the gap before them is
removed too. The records themselves stay until the topic's retention deletes them (an audit
trail; ``kafka-consumer-groups.sh --describe --group dispytch.dlq-replay`` shows the lag: the
dead letters not yet replayed or purged).

Consequences: one operation at a time per dead-letter topic (two at once would overwrite each
other's marks; a lost mark means a dead letter offered again, never one lost), and a filtered
operation that leaves very many scattered dead letters behind on one partition can run out of
metadata room (4,000 characters of ranges): it then stops with an error that says to replay or
purge the ones in between first.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from dispytch.dead_letter import DeadLetter
from dispytch.dlq.store import DeadLetterStore
from dispytch.errors import ConfigurationError
from dispytch.kafka.producer import KafkaProducer
from dispytch.kafka.topics import (
    DEAD_LETTER_SUFFIX,
    FALLBACK_PREFIX,
    dead_letter_topic,
    fallback_topic,
)

if TYPE_CHECKING:
    from dispytch.kafka.backend import KafkaBackend

__all__ = ["REPLAY_GROUP", "KafkaDeadLetterStore", "Marks"]

#: The consumer group whose committed offsets mark dead letters as removed.
REPLAY_GROUP = "dispytch.dlq-replay"
_META_PREFIX = "dispytch-dlq:1:"
#: Longest metadata written (brokers refuse more than offset.metadata.max.bytes, 4096).
_MAX_METADATA = 4000
_RANGE = re.compile(r"^(\d{1,19})(?:-(\d{1,19}))?$")
_ADMIN_PARAMS = frozenset(inspect.signature(AIOKafkaAdminClient.__init__).parameters) - {
    "self",
    "loop",
}
#: Records fetched per round.
_FETCH = 500


@dataclass
class Marks:
    """What is removed on one partition: every offset below ``committed``, and ``removed``."""

    committed: int = 0
    removed: set[int] = field(default_factory=set)

    @classmethod
    def parse(cls, offset: int, metadata: str | None) -> Marks:
        marks = cls(max(offset, 0))
        text = metadata or ""
        if text.startswith(_META_PREFIX):
            for part in text[len(_META_PREFIX) :].split(","):
                match = _RANGE.match(part)
                if match is None:
                    continue  # not ours or damaged: ignored (an offer again, never a loss)
                low = int(match.group(1))
                high = int(match.group(2) or low)
                if high - low <= 1_000_000:
                    marks.removed.update(range(max(low, marks.committed), high + 1))
        return marks

    def remove(self, offsets: Sequence[int]) -> None:
        self.removed.update(o for o in offsets if o >= self.committed)
        while self.committed in self.removed:
            self.removed.discard(self.committed)
            self.committed += 1

    def is_removed(self, offset: int) -> bool:
        return offset < self.committed or offset in self.removed

    def metadata(self) -> str:
        ranges: list[str] = []
        start = previous = None
        for offset in sorted(self.removed):
            if previous is not None and offset == previous + 1:
                previous = offset
                continue
            if start is not None:
                ranges.append(_range(start, previous))
            start = previous = offset
        if start is not None:
            ranges.append(_range(start, previous))
        return _META_PREFIX + ",".join(ranges) if ranges else ""


def _range(low: int, high: int | None) -> str:
    return str(low) if high in (None, low) else f"{low}-{high}"


class KafkaDeadLetterStore(DeadLetterStore):
    """Dead letters in Kafka topics; removal is a mark in the committed offsets of
    ``dispytch.dlq-replay`` (see the module docstring)."""

    removal = f"marked removed in the committed offsets of consumer group {REPLAY_GROUP}"

    def __init__(self, backend: KafkaBackend, group: str | None = None) -> None:
        self.kafka: KafkaProducer = backend.producer()
        super().__init__(self.kafka, group)
        self.backend = backend
        self._reader: AIOKafkaConsumer | None = None
        self._marks: dict[TopicPartition, Marks] = {}

    async def _open(self) -> AIOKafkaConsumer:
        if self._reader is None:
            reader = self.backend._reader(REPLAY_GROUP)
            await reader.start()
            self._reader = reader
        return self._reader

    async def _topics(self, reader: AIOKafkaConsumer, topics: frozenset[str]) -> list[str]:
        known = await reader.topics()
        if topics:
            wanted = [dead_letter_topic(t) for t in sorted(topics)]
        else:
            wanted = sorted(t for t in known if t.endswith(DEAD_LETTER_SUFFIX))
        if self.group is not None:
            wanted.append(fallback_topic(self.group))
        else:
            wanted += sorted(t for t in known if t.startswith(FALLBACK_PREFIX))
        return [t for t in dict.fromkeys(wanted) if t in known]

    async def _load_marks(self, tps: list[TopicPartition]) -> None:
        options = self.backend.consumer_options
        admin_options = {k: v for k, v in options.items() if k in _ADMIN_PARAMS}
        admin = AIOKafkaAdminClient(bootstrap_servers=self.backend.servers, **admin_options)
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(REPLAY_GROUP, partitions=tps)
        finally:
            await admin.close()
        for tp in tps:
            found = committed.get(tp)
            if found is None or found.offset < 0:
                self._marks[tp] = Marks()
            else:
                self._marks[tp] = Marks.parse(found.offset, found.metadata)

    async def scan(self, topics: frozenset[str] = frozenset()) -> AsyncGenerator[DeadLetter, None]:
        reader = await self._open()
        names = await self._topics(reader, topics)
        tps: list[TopicPartition] = []
        await self.kafka.start()
        for name in names:
            partitions = await self.kafka.producer.partitions_for(name)
            tps += [TopicPartition(name, p) for p in sorted(partitions or ())]
        if not tps:
            return
        await self._load_marks(tps)
        reader.assign(tps)
        reader.pause(*tps)
        beginning = await reader.beginning_offsets(tps)
        end = await reader.end_offsets(tps)
        for tp in tps:
            marks = self._marks[tp]
            start = max(marks.committed, beginning[tp])
            if start >= end[tp]:
                continue
            reader.seek(tp, start)
            reader.resume(tp)
            try:
                while await reader.position(tp) < end[tp]:
                    batches = await reader.getmany(tp, timeout_ms=1000, max_records=_FETCH)
                    for record in batches.get(tp, ()):
                        if record.offset >= end[tp]:
                            break
                        if marks.is_removed(record.offset):
                            continue
                        letter = self._letter(tp, record)
                        if topics and letter.topic not in topics:
                            continue
                        yield letter
            finally:
                reader.pause(tp)

    @staticmethod
    def _letter(tp: TopicPartition, record: Any) -> DeadLetter:
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers or ()}
        topic = headers.get("x-dispytch-original-topic")
        if topic is None:  # not written by Dispytch: named after its dead-letter topic
            topic = tp.topic.removesuffix(DEAD_LETTER_SUFFIX)
        return DeadLetter(
            topic,
            record.value if record.value is not None else b"",
            headers,
            record.key,
            tp.topic,
            f"{tp.partition}@{record.offset}",
            (tp, record.offset),
        )

    async def remove(self, letters: Sequence[DeadLetter]) -> None:
        by_tp: dict[TopicPartition, list[int]] = {}
        for letter in letters:
            tp, offset = letter.handle
            by_tp.setdefault(tp, []).append(offset)
        commit: dict[TopicPartition, tuple[int, str]] = {}
        for tp, offsets in by_tp.items():
            marks = self._marks.setdefault(tp, Marks())
            marks.remove(offsets)
            metadata = marks.metadata()
            if len(metadata) > _MAX_METADATA:
                raise ConfigurationError(
                    f"too many dead letters removed out of order on {tp.topic}[{tp.partition}] "
                    "to mark them in the committed offsets; replay or purge the ones in "
                    "between first (e.g. without the filter), then run this again"
                )
            commit[tp] = (marks.committed, metadata)
        reader = await self._open()
        await reader.commit(commit)

    async def release(self) -> None:
        """End of an operation: its reader goes (a new one per operation, so no fetch of an
        earlier scan can move a later one's position)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.stop()
