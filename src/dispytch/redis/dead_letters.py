"""Dead letters in Redis Streams: one stream ``{topic}.dlq`` per topic.

Each entry has the field ``payload`` (the original bytes) and one field per failure header
(``x-dispytch-reason``, ``x-dispytch-error-type``...). Streams are durable (as durable as the
server's persistence settings), unlike Pub/Sub.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from dispytch.dead_letter import DeadLetter, dead_letter_topic

__all__ = ["DEFAULT_DEAD_LETTER_MAXLEN", "add_dead_letter", "read_dead_letters"]

#: Default cap of a dead-letter stream (trimmed approximately, ``MAXLEN ~``).
DEFAULT_DEAD_LETTER_MAXLEN = 100_000

PAYLOAD_FIELD = "payload"


async def add_dead_letter(
    client: Redis,
    topic: str,
    payload: bytes,
    headers: Mapping[str, str],
    maxlen: int | None = DEFAULT_DEAD_LETTER_MAXLEN,
) -> None:
    """XADD ``payload`` and ``headers`` to ``{topic}.dlq``, trimming it to about ``maxlen``."""
    fields: dict[Any, Any] = {name: value for name, value in headers.items()}
    fields[PAYLOAD_FIELD] = payload  # a header cannot shadow the payload
    await client.xadd(dead_letter_topic(topic), fields, maxlen=maxlen, approximate=True)


async def read_dead_letters(client: Redis, topic: str, limit: int = 100) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``topic``, oldest first, without removing them."""
    entries = await client.xrange(dead_letter_topic(topic), "-", "+", count=limit)
    out: list[DeadLetter] = []
    for _entry_id, fields in entries or ():
        payload = b""
        headers: dict[str, str] = {}
        for name, value in (fields or {}).items():
            key = _text(name)
            if key == PAYLOAD_FIELD:
                payload = value if isinstance(value, bytes) else str(value).encode()
            else:
                headers[key] = _text(value)
        out.append(DeadLetter(topic, payload, headers))
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
