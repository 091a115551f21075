"""Dead letters: entries of the stream ``{topic}.dlq``, written by both modes.

A dead letter is laid out like any Streams message (see :mod:`dispytch.redis.fields`): the
original bytes in ``payload``, the original ``key`` when there is one, and the failure details as
``h:x-dispytch-…`` header fields. So a ``.dlq`` stream can be read, replayed or even consumed
like any other stream, whichever mode wrote it. :func:`read_dead_letters` also reads entries
whose failure fields have no ``h:`` prefix (what the Pub/Sub mode wrote before).
Streams are durable (as durable as the server's persistence settings), unlike Pub/Sub.
"""

from __future__ import annotations

from collections.abc import Mapping

from redis.asyncio import Redis

from dispytch.dead_letter import DeadLetter, dead_letter_topic
from dispytch.redis.fields import HEADER_PREFIX, KEY_FIELD, PAYLOAD_FIELD, encode_fields

__all__ = ["DEFAULT_DEAD_LETTER_MAXLEN", "add_dead_letter", "read_dead_letters"]

#: Default cap of a Pub/Sub dead-letter stream (trimmed approximately, ``MAXLEN ~``).
DEFAULT_DEAD_LETTER_MAXLEN = 100_000

_BARE_HEADER_PREFIX = b"x-dispytch-"


async def add_dead_letter(
    client: Redis,
    topic: str,
    payload: bytes,
    key: bytes | None,
    headers: Mapping[str, str],
    maxlen: int | None = None,
) -> None:
    """XADD ``payload``, ``key`` and ``headers`` to ``{topic}.dlq`` (trimmed to ~``maxlen``)."""
    await client.xadd(
        dead_letter_topic(topic),
        encode_fields(payload, key, headers),
        maxlen=maxlen,
        approximate=True,
    )


async def read_dead_letters(client: Redis, topic: str, limit: int = 100) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``topic``, oldest first, without removing them."""
    entries = await client.xrange(dead_letter_topic(topic), "-", "+", count=limit)
    out: list[DeadLetter] = []
    for _entry_id, fields in entries or ():
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
                headers.setdefault(
                    name.decode("utf-8", "replace"), value.decode("utf-8", "replace")
                )
        out.append(DeadLetter(topic, payload, headers, key))
    return out


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
