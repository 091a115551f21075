"""Redis dead letters as a :class:`~dispytch.dlq.DeadLetterStore` (both modes write them).

Destinations: the stream ``{topic}.dlq`` of each topic, and the groups' fallback streams
``dispytch.fallback.{group}.dlq`` (the original topic in a header). Without a topic filter the
store finds them with ``SCAN … MATCH *.dlq TYPE stream``. Reading is ``XRANGE`` in pages;
removing is ``XDEL`` of the entry ids (pipelined per batch).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from dispytch.dead_letter import DEAD_LETTER_SUFFIX, DeadLetter, dead_letter_topic
from dispytch.dlq.selection import EVERYTHING, Selection
from dispytch.dlq.store import DeadLetterStore, ReplayReport, original_topic
from dispytch.emitter.producer import Producer
from dispytch.errors import ConfigurationError
from dispytch.redis.dead_letters import FALLBACK_PREFIX, fallback_stream, parse_dead_letter

__all__ = ["RedisDeadLetters"]

#: Entries per XRANGE page.
_PAGE = 500


class RedisDeadLetters(DeadLetterStore):
    """Dead letters in Redis streams. ``replayable=False`` (Redis Pub/Sub) refuses replays:
    a replayed event published while no subscriber listens would be lost."""

    removal = "XDEL from its stream"

    def __init__(
        self,
        client: Redis,
        producer: Producer | None,
        group: str | None = None,
        *,
        replayable: bool = True,
    ) -> None:
        super().__init__(producer, group)
        self.client = client
        self.replayable = replayable

    async def replay(self, selection: Selection = EVERYTHING, **options: Any) -> ReplayReport:
        if not self.replayable and not options.get("dry_run"):
            raise ConfigurationError(
                "Redis Pub/Sub keeps nothing: a replayed event nobody is subscribed to at that "
                "moment is lost, so this store does not replay; use redis+streams:// for events "
                "that must survive, or read the dead letters (list/show) and publish them yourself"
            )
        return await super().replay(selection, **options)

    async def _streams(self, topics: frozenset[str]) -> list[str]:
        if topics:
            own = [dead_letter_topic(topic) for topic in sorted(topics)]
            if self.group is not None:
                return [*own, fallback_stream(self.group)]
            return own + [s for s in await self._find() if s.startswith(FALLBACK_PREFIX)]
        found = await self._find()
        if self.group is not None:
            fallback = fallback_stream(self.group)
            found = [s for s in found if not s.startswith(FALLBACK_PREFIX) or s == fallback]
        # Each topic's own stream first, then the fallback streams.
        return sorted(found, key=lambda s: (s.startswith(FALLBACK_PREFIX), s))

    async def _find(self) -> list[str]:
        out: list[str] = []
        async for raw in self.client.scan_iter(match=f"*{DEAD_LETTER_SUFFIX}", _type="stream"):
            try:
                out.append(raw.decode() if isinstance(raw, bytes) else str(raw))
            except UnicodeDecodeError:
                continue  # no dead-letter stream is named so (undecodable topics use the fallback)
        return out

    async def scan(self, topics: frozenset[str] = frozenset()) -> AsyncGenerator[DeadLetter, None]:
        for stream in await self._streams(topics):
            fallback = stream.startswith(FALLBACK_PREFIX)
            own_topic = "" if fallback else stream[: -len(DEAD_LETTER_SUFFIX)]
            start = "-"
            while True:
                try:
                    entries = await self.client.xrange(stream, start, "+", count=_PAGE)
                except ResponseError:  # not a stream (any more)
                    break
                for raw_id, fields in entries or ():
                    entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                    letter = parse_dead_letter(own_topic, fields)
                    if fallback:
                        letter.topic = original_topic(letter.headers)
                    if topics and letter.topic not in topics:
                        continue
                    letter.destination = stream
                    letter.position = entry_id
                    letter.handle = (stream, entry_id)
                    yield letter
                if not entries or len(entries) < _PAGE:
                    break
                start = "(" + entry_id

    async def remove(self, letters: Sequence[DeadLetter]) -> None:
        by_stream: dict[str, list[str]] = {}
        for letter in letters:
            stream, entry_id = letter.handle
            by_stream.setdefault(stream, []).append(entry_id)
        pipe = self.client.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xdel(stream, *ids)
        await pipe.execute()
