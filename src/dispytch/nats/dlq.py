"""JetStream dead letters as a :class:`~dispytch.dlq.DeadLetterStore`.

Destinations: the dead-letter stream (``dispytch_dlq``) under ``{prefix}.{topic}`` and the
groups' fallback subjects ``{prefix}._fallback.{group}``. Reading goes through a short-lived
consumer that acknowledges nothing (deleted afterwards, or expiring by itself); removing is
JetStream's per-message delete (``STREAM.MSG.DELETE``) of each stream sequence, or, when the
letters removed are exactly the oldest ones of their subject that this store read (the common
case: a replay or purge of whole topics), one purge of that subject up to the newest of them
(``STREAM.PURGE`` with a filter and a sequence): per-message deletes run at about 2,000/s, a
purge takes a whole batch at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Sequence

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from dispytch.dead_letter import DeadLetter
from dispytch.dlq.store import DeadLetterStore, original_topic
from dispytch.emitter.producer import Producer
from dispytch.nats.dead_letters import (
    FALLBACK_TOKEN,
    group_token,
    split_key,
    stored_messages,
    valid_subject,
)

__all__ = ["NATSDeadLetters"]

#: Messages per fetch, and seconds one fetch waits.
_PAGE = 256
_FETCH_TIMEOUT = 5.0
#: Deletes in flight at once.
_DELETES = 64


class NATSDeadLetters(DeadLetterStore):
    """Dead letters in the JetStream stream ``stream`` (subjects ``{prefix}.>``)."""

    removal = "deleted from the dead-letter stream (STREAM.MSG.DELETE)"

    def __init__(
        self,
        jetstream: JetStreamContext,
        producer: Producer | None,
        stream: str,
        prefix: str,
        group: str | None = None,
    ) -> None:
        super().__init__(producer, group)
        self.jetstream = jetstream
        self.stream = stream
        self.prefix = prefix
        self._fallback = f"{prefix}.{FALLBACK_TOKEN}."
        #: subject -> sequences read and not removed, oldest first (every message of the
        #: subject from its oldest on: a purge up to the first of them removes exactly what
        #: precedes it)
        self._unremoved: dict[str, deque[int]] = {}

    def _subjects(self, topics: frozenset[str]) -> list[str]:
        if not topics:
            return [f"{self.prefix}.>"]
        own = [f"{self.prefix}.{t}" for t in sorted(topics)]
        fallback = self._fallback + (group_token(self.group) if self.group else ">")
        return [s for s in own if valid_subject(s)] + [fallback]

    async def scan(self, topics: frozenset[str] = frozenset()) -> AsyncGenerator[DeadLetter, None]:
        mine = None if self.group is None else self._fallback + group_token(self.group)
        self._unremoved.clear()
        for subject in self._subjects(topics):
            async with contextlib.aclosing(
                stored_messages(self.jetstream, self.stream, subject)
            ) as messages:
                async for msg in messages:
                    seq = msg.metadata.sequence.stream
                    self._unremoved.setdefault(msg.subject, deque()).append(seq)
                    fallback = msg.subject.startswith(self._fallback)
                    if fallback and mine is not None and msg.subject != mine:
                        continue  # another group's fallback
                    headers, key = split_key(msg.headers)
                    if fallback:
                        topic = original_topic(headers)
                    else:
                        topic = msg.subject[len(self.prefix) + 1 :]
                    if topics and topic not in topics:
                        continue
                    yield DeadLetter(topic, msg.data, headers, key, msg.subject, str(seq), seq)

    async def remove(self, letters: Sequence[DeadLetter]) -> None:
        by_subject: dict[str, list[int]] = {}
        for letter in letters:
            by_subject.setdefault(letter.destination, []).append(letter.handle)
        singles: list[int] = []
        for subject, seqs in by_subject.items():
            seqs.sort()
            unremoved = self._unremoved.get(subject)
            if unremoved is not None and list(_head(unremoved, len(seqs))) == seqs:
                await self.jetstream.purge_stream(self.stream, seq=seqs[-1] + 1, subject=subject)
                for _ in seqs:
                    unremoved.popleft()
            else:
                singles.extend(seqs)
                if unremoved is not None:
                    gone = set(seqs)
                    self._unremoved[subject] = deque(s for s in unremoved if s not in gone)
        if singles:
            await self._delete(singles)

    async def _delete(self, seqs: list[int]) -> None:
        limit = asyncio.Semaphore(_DELETES)

        async def delete(seq: int) -> None:
            async with limit:
                # NotFound: already gone (removed by another operator meanwhile)
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self.jetstream.delete_msg(self.stream, seq)

        await asyncio.gather(*(delete(seq) for seq in seqs))


def _head(items: deque[int], count: int) -> list[int]:
    return [items[i] for i in range(min(count, len(items)))]
