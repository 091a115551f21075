"""Dead letters on Kafka: where they go, what they carry, and reading them back.

The dead letters of topic ``T`` go to ``T.dlq`` (a hashed name when that is too long; see
:mod:`dispytch.kafka.topics`), keyed like the original record, with its value byte for byte,
its headers (values byte for byte; a header whose name was not UTF-8 as
``x-dispytch-undecodable-header-<n>``) and the ``x-dispytch-*`` failure headers. When
``T.dlq`` cannot be written, the consumer group's fallback topic ``dispytch.dlq.<group>``
takes them (the original topic in ``x-dispytch-original-topic``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from dispytch.dead_letter import DeadLetter
from dispytch.kafka.producer import KafkaProducer
from dispytch.kafka.topics import dead_letter_topic, fallback_topic
from dispytch.listener.consumer import Failure, Message
from dispytch.poison import UNDECODABLE_HEADER, header_pair

__all__ = ["KafkaDeadLetters", "dead_letter_headers", "read_dead_letters"]

_OURS = "x-dispytch-"


def dead_letter_headers(message: Message, failure: Failure) -> list[tuple[str, bytes]]:
    """The headers of ``message``'s dead letter: the original record's headers (values as
    bytes, as they were) and the failure headers; incoming ``x-dispytch-*`` headers are left to
    :meth:`Failure.headers`."""
    raw = getattr(message.extra, "headers", None)
    if raw is None:
        raw = [(k, v.encode()) for k, v in message.headers.items()]
    text: dict[str, str] = {}
    kept: list[tuple[str, bytes]] = []  # what text cannot carry: kept byte for byte
    undecodable = False
    for index, (name, value) in enumerate(raw):
        if isinstance(name, bytes):
            try:
                name = name.decode()
            except UnicodeDecodeError:
                pair_name, pair = header_pair(index, name, value or b"")
                kept.append((pair_name, pair.encode()))
                undecodable = True
                continue
        try:
            text[name] = (value or b"").decode()
        except UnicodeDecodeError:
            if not name.startswith(_OURS):
                kept.append((name, value or b""))
    ours = failure.headers(dataclasses.replace(message, headers=text))
    out = [(k, v.encode()) for k, v in ours.items()]
    out += [(k, v.encode()) for k, v in text.items() if k not in ours and not k.startswith(_OURS)]
    out += kept
    if undecodable:
        out.append((UNDECODABLE_HEADER, b"headers"))
    return out


class KafkaDeadLetters:
    """Writes the dead letters of a :class:`~dispytch.kafka.KafkaConsumer` with ``producer``.

    ``group`` names the fallback topic ``dispytch.dlq.<group>``; without it there is no
    fallback.
    """

    def __init__(self, producer: KafkaProducer, group: str | None = None) -> None:
        self.producer = producer
        self.group = group

    async def put(self, message: Message, failure: Failure) -> None:
        await self._send(dead_letter_topic(message.topic), message, failure)

    async def put_fallback(self, message: Message, failure: Failure) -> bool:
        if self.group is None:
            return False
        await self._send(fallback_topic(self.group), message, failure)
        return True

    async def _send(self, topic: str, message: Message, failure: Failure) -> None:
        record = message.extra
        value = getattr(record, "value", message.payload)
        await self.producer.send_record(
            topic,
            value if value is not None else b"",
            key=message.key,
            headers=dead_letter_headers(message, failure),
        )


async def read_dead_letters(
    reader: AIOKafkaConsumer,
    producer: KafkaProducer,
    topics: Iterable[str],
    original: str,
    limit: int,
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of topic ``original`` stored in ``topics``, oldest first.

    ``reader`` is a started consumer without a group (nothing is committed or removed).
    """
    known = await reader.topics()
    tps: list[TopicPartition] = []
    for topic in dict.fromkeys(topics):
        if topic not in known:
            continue
        # The topic exists, so this metadata request creates nothing.
        partitions = await producer.producer.partitions_for(topic)
        tps += [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:  # none yet, or just created with no partition leader known: nothing to read
        return []
    reader.assign(tps)
    await reader.seek_to_beginning(*tps)
    end = await reader.end_offsets(tps)
    records: list[Any] = []
    left = {tp for tp in tps if await reader.position(tp) < end[tp]}
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        batches = await reader.getmany(*left, timeout_ms=200)
        for tp, batch in batches.items():
            records.extend(r for r in batch if r.offset < end[tp])
        for tp in list(left):
            if await reader.position(tp) >= end[tp]:
                left.discard(tp)
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    out = []
    for record in records:
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}
        topic = headers.get("x-dispytch-original-topic", original)
        if topic != original:
            continue  # a fallback topic holds the dead letters of every topic of its group
        out.append(DeadLetter(topic=topic, payload=record.value, headers=headers, key=record.key))
        if len(out) >= limit:
            break
    return out
