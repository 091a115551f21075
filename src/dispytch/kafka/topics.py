"""Kafka topic names: which are legal, and where dead letters go. Pure.

Kafka accepts topic names of at most 249 characters from ``[a-zA-Z0-9._-]``, other than ``.``
and ``..``. Every dead-letter destination computed here is such a name, whatever the topic or
group it is made from:

* the dead letters of topic ``T`` go to ``T.dlq``; when that would be longer than 249
  characters, to the first 232 characters of ``T``, ``-``, 12 hex digits of ``T``'s SHA-256 and
  ``.dlq`` (still one topic per original topic, found again by :func:`dead_letter_topic`);
* the fallback destination of consumer group ``G`` (used when ``T.dlq`` cannot be written) is
  ``dispytch.dlq.G``, with the characters Kafka does not allow replaced by ``_`` and, when
  anything was replaced or cut, the hash suffix added.

Dead-letter topics (ending in ``.dlq``, or starting with ``dispytch.dlq.``) and the groups'
retry topics (``dispytch.retry.<group>.<ms>ms``) are never matched by a handler pattern: a
``{segment}`` pattern subscription leaves them out.
"""

from __future__ import annotations

import hashlib
import re

from dispytch.errors import InvalidTopicError
from dispytch.untrusted import loggable

__all__ = [
    "MAX_TOPIC_LENGTH",
    "check_topic",
    "dead_letter_topic",
    "fallback_topic",
    "is_dead_letter_topic",
    "retry_topic",
]

MAX_TOPIC_LENGTH = 249
DEAD_LETTER_SUFFIX = ".dlq"
FALLBACK_PREFIX = "dispytch.dlq."
_LEGAL = re.compile(r"[a-zA-Z0-9._-]+")
_ILLEGAL_CHAR = re.compile(r"[^a-zA-Z0-9._-]")
_HASH_CHARS = 12
#: Prefix of the groups' broker-delayed retry topics (``dispytch.retry.<group>.<ms>ms``).
RETRY_PREFIX = "dispytch.retry."
#: A regex prefix that refuses dead-letter and retry topics (used in pattern subscriptions).
NOT_DEAD_LETTER = r"(?!.*\.dlq$)(?!dispytch\.dlq\.)(?!dispytch\.retry\.)"


def check_topic(topic: str) -> None:
    """Raise :class:`~dispytch.errors.InvalidTopicError` unless Kafka accepts ``topic``."""
    if not topic:
        raise InvalidTopicError("a Kafka topic name cannot be empty", rule="empty")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidTopicError(
            f"Kafka topic {loggable(topic, 60)!r} is {len(topic)} characters long; Kafka "
            f"allows at most {MAX_TOPIC_LENGTH}",
            rule="length",
        )
    if topic in (".", ".."):
        raise InvalidTopicError(f"{topic!r} is not a legal Kafka topic name", rule="reserved")
    if not _LEGAL.fullmatch(topic):
        bad = _ILLEGAL_CHAR.search(topic)
        char = bad.group() if bad else "?"
        raise InvalidTopicError(
            f"Kafka topic {loggable(topic, 60)!r} contains {loggable(char)!r}; Kafka topic "
            "names may only contain ASCII letters, digits, '.', '_' and '-'",
            rule="characters",
        )


def _hashed(name: str, source: str, limit: int) -> str:
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    return f"{name[: limit - _HASH_CHARS - 1]}-{digest}"


def dead_letter_topic(topic: str) -> str:
    """Where the dead letters of ``topic`` go: ``topic.dlq``, or a hashed name when too long."""
    name = topic + DEAD_LETTER_SUFFIX
    if len(name) <= MAX_TOPIC_LENGTH and _LEGAL.fullmatch(topic):
        return name
    clean = _ILLEGAL_CHAR.sub("_", topic)
    return _hashed(clean, topic, MAX_TOPIC_LENGTH - len(DEAD_LETTER_SUFFIX)) + DEAD_LETTER_SUFFIX


def fallback_topic(group: str) -> str:
    """The fixed fallback dead-letter topic of consumer group ``group``."""
    clean = _ILLEGAL_CHAR.sub("_", group)
    name = FALLBACK_PREFIX + clean
    if clean == group and len(name) <= MAX_TOPIC_LENGTH and group:
        return name
    return FALLBACK_PREFIX + _hashed(clean, group, MAX_TOPIC_LENGTH - len(FALLBACK_PREFIX))


def retry_topic(group: str, delay_ms: int) -> str:
    """The retry topic of consumer group ``group`` for delays of ``delay_ms``:
    ``dispytch.retry.<group>.<ms>ms`` (characters Kafka does not allow replaced, and a hash
    suffix when anything was replaced or cut)."""
    suffix = f".{delay_ms}ms"
    clean = _ILLEGAL_CHAR.sub("_", group)
    limit = MAX_TOPIC_LENGTH - len(RETRY_PREFIX) - len(suffix)
    if clean == group and len(clean) <= limit and group:
        return RETRY_PREFIX + clean + suffix
    return RETRY_PREFIX + _hashed(clean, group, limit) + suffix


def is_dead_letter_topic(topic: str) -> bool:
    return topic.endswith(DEAD_LETTER_SUFFIX) or topic.startswith(FALLBACK_PREFIX)
