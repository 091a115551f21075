"""Dead letters: entries of the stream ``{topic}.dlq``, written by both modes.

A dead letter is laid out like any Streams message (see :mod:`dispytch.redis.fields`): the
original bytes in ``payload``, the original ``key`` when there is one, and the failure details as
``h:x-dispytch-…`` header fields. So a ``.dlq`` stream can be read, replayed or even consumed
like any other stream, whichever mode wrote it. :func:`read_dead_letters` also reads entries
whose failure fields have no ``h:`` prefix (what the Pub/Sub mode wrote before).
Streams are durable (as durable as the server's persistence settings), unlike Pub/Sub.

**The fallback stream** ``dispytch.fallback.{group}.dlq`` (one per consumer group) takes the
dead letters that cannot go to ``{topic}.dlq``: Redis refused that stream (it is another type
of key, say), or the message's channel or stream key is not UTF-8 so it names no topic. The
original topic is in the ``x-dispytch-original-topic`` header (escaped; the exact bytes are in
``x-dispytch-original-topic-b64``), and :func:`read_dead_letters` finds them by that header.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from dispytch.dead_letter import DEAD_LETTER_SUFFIX, DeadLetter, dead_letter_topic
from dispytch.errors import EmitError
from dispytch.listener.consumer import Failure, Message
from dispytch.poison import dead_letter_headers
from dispytch.redis.fields import HEADER_PREFIX, KEY_FIELD, PAYLOAD_FIELD, encode_fields
from dispytch.untrusted import loggable

__all__ = [
    "DEFAULT_DEAD_LETTER_MAXLEN",
    "DeadLetterWriter",
    "add_dead_letter",
    "fallback_stream",
    "parse_dead_letter",
    "read_dead_letters",
]

#: Default cap of a Pub/Sub dead-letter stream (trimmed approximately, ``MAXLEN ~``).
DEFAULT_DEAD_LETTER_MAXLEN = 100_000

_BARE_HEADER_PREFIX = b"x-dispytch-"
FALLBACK_PREFIX = "dispytch.fallback."
_ORIGINAL_TOPIC = "x-dispytch-original-topic"
#: Fallback entries scanned at most by one :func:`read_dead_letters` call.
_FALLBACK_SCAN = 10_000


def fallback_stream(group: str) -> str:
    """The fallback dead-letter stream of consumer group ``group``."""
    return f"{FALLBACK_PREFIX}{group}{DEAD_LETTER_SUFFIX}"


async def add_dead_letter(
    client: Redis,
    topic: str,
    payload: bytes,
    key: bytes | None,
    headers: Mapping[str, str],
    maxlen: int | None = None,
    *,
    stream: str | None = None,
) -> None:
    """XADD ``payload``, ``key`` and ``headers`` to ``{topic}.dlq`` (or to ``stream``), trimmed
    to ~``maxlen``."""
    await client.xadd(
        stream or dead_letter_topic(topic),
        encode_fields(payload, key, headers),
        maxlen=maxlen,
        approximate=True,
    )


class DeadLetterWriter:
    """Writes one consumer's dead letters: to ``{topic}.dlq``, or to its group's fallback
    stream. Each write gives up after ``timeout`` seconds, and a refusal by Redis raises
    :class:`~dispytch.errors.EmitError` at once saying which stream and why."""

    def __init__(
        self, group: str, maxlen: int | None, timeout: float = 10.0, *, ids: bool = False
    ) -> None:
        self.fallback = fallback_stream(group)
        self.maxlen = maxlen
        self.timeout = timeout
        self._ids = ids

    async def write(
        self, client: Redis, message: Message, failure: Failure, *, fallback: bool
    ) -> bool:
        """Store ``message``; in the fallback stream when ``fallback`` or when its topic
        could not be read. Returns ``True`` (stored) or raises."""
        headers = dead_letter_headers(message, failure)
        extra = message.extra
        if self._ids and extra is not None:
            entry_id = extra[1] if type(extra) is tuple else extra  # (stream, id) if undecodable
            headers["x-dispytch-original-id"] = str(entry_id)
        unreadable_topic = message.undecodable is not None and message.undecodable.topic_unreadable
        stream = self.fallback if fallback or unreadable_topic else None
        where = stream or dead_letter_topic(message.topic)
        try:
            async with asyncio.timeout(self.timeout):
                await add_dead_letter(
                    client,
                    message.topic,
                    message.payload,
                    message.key,
                    headers,
                    self.maxlen,
                    stream=stream,
                )
        except ResponseError as exc:
            raise EmitError(
                f"Redis refused the dead letter for stream {loggable(where)} ({exc}); if the "
                "key exists and is not a stream, rename or delete it"
            ) from None
        except TimeoutError:
            raise EmitError(
                f"Redis did not store the dead letter in stream {loggable(where)} within "
                f"{self.timeout}s"
            ) from None
        return True


async def read_dead_letters(client: Redis, topic: str, limit: int = 100) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``topic``, oldest first, without removing them: those
    of ``{topic}.dlq``, then those of ``topic`` in the groups' fallback streams."""
    try:
        entries = await client.xrange(dead_letter_topic(topic), "-", "+", count=limit)
    except ResponseError:  # the key is not a stream: its dead letters went to the fallback
        entries = []
    out = [parse_dead_letter(topic, fields) for _entry_id, fields in entries or ()]
    if len(out) >= limit:
        return out
    async for raw in client.scan_iter(match=f"{FALLBACK_PREFIX}*", _type="stream"):
        if not _bytes(raw).endswith(DEAD_LETTER_SUFFIX.encode()):
            continue
        entries = await client.xrange(raw, "-", "+", count=_FALLBACK_SCAN)
        for _entry_id, fields in entries or ():
            letter = parse_dead_letter(topic, fields)
            if letter.headers.get(_ORIGINAL_TOPIC) == topic:
                out.append(letter)
                if len(out) >= limit:
                    return out
    return out


def parse_dead_letter(topic: str, fields: Mapping[Any, Any] | None) -> DeadLetter:
    """The dead letter in a stream entry's ``fields`` (``topic``: its original topic)."""
    payload = b""
    key: bytes | None = None
    headers: dict[str, str] = {}
    for raw_name, raw_value in (fields or {}).items():
        name = _bytes(raw_name)
        value = _bytes(raw_value)
        if name == PAYLOAD_FIELD:
            payload = value
        elif name == KEY_FIELD:
            key = value
        elif name.startswith(HEADER_PREFIX):
            headers[name[2:].decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        elif name.startswith(_BARE_HEADER_PREFIX):
            headers.setdefault(name.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
    return DeadLetter(topic, payload, headers, key)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
