"""Messages whose broker metadata cannot be decoded, and read-ahead overflow.

When the broker metadata of a delivery cannot be decoded (a Kafka header name or an AMQP
routing key that is not UTF-8, say), no handler can be chosen for it. The adapter still yields
it, marked with an :class:`Undecodable` in :attr:`Message.undecodable <dispytch.seam.Message>`:
which parts could not be read, and those parts base64-encoded for the dead letter's
``x-dispytch-undecodable*`` headers (:func:`dead_letter_headers`). The listener dead-letters it
at once with reason ``decode`` (:meth:`Undecodable.failure`), through the one dead-letter chain
every failure takes (:class:`~dispytch.listener.settle.Settler`: the consumer's destination,
retried with backoff, then its fallback destination, else :class:`DeadLetterError`), with the
same log line and the same middleware outcome (``dead_lettered``).

**No room left.** A broker that pushes without backpressure (Redis Pub/Sub, core NATS) fills
the adapter's read-ahead buffer faster than handlers empty it; past its bounds the adapter
drops what arrives and reports it with an :class:`Overflow` (a counter, and an ERROR line at
most every 10 seconds).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from dispytch.seam import Failure, Message

__all__ = [
    "UNDECODABLE_HEADER",
    "Overflow",
    "Undecodable",
    "b64",
    "dead_letter_headers",
    "shown",
]

#: Which parts of a dead letter's original could not be decoded, comma-separated
#: (``topic``, ``key``, ``headers``, ``payload``).
UNDECODABLE_HEADER = "x-dispytch-undecodable"
#: The original topic's raw bytes, base64 (``x-dispytch-original-topic`` shows them escaped).
TOPIC_B64_HEADER = "x-dispytch-original-topic-b64"
#: Prefix of one header per header that was not text: ``<base64 name>:<base64 value>``.
HEADER_B64_PREFIX = "x-dispytch-undecodable-header-"


@dataclass(slots=True, frozen=True)
class Undecodable:
    """:attr:`Message.undecodable <dispytch.seam.Message>`: what of a delivery's broker
    metadata could not be decoded.

    Attributes:
        parts: what could not be decoded: ``"topic"``, ``"key"``, ``"headers"``, ``"payload"``
            (a Redis stream entry without a ``payload`` field), ``"properties"``.
        detail: one line saying what was wrong, for the dead letter's error message.
        headers: the raw parts, base64-encoded, added to the dead letter's headers (empty
            where the backend's dead-letter writer reads the raw delivery itself).
    """

    parts: tuple[str, ...]
    detail: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def topic_unreadable(self) -> bool:
        """The topic could not be decoded: it cannot name a dead-letter destination."""
        return "topic" in self.parts

    def failure(self, attempts: int = 1) -> Failure:
        """The failure a dead letter of this message records (reason ``decode``)."""
        return Failure(
            "decode", "UndecodableMetadata", self.detail, None, attempts, int(time.time() * 1000)
        )


def shown(raw: bytes) -> str:
    """``raw`` as text for a topic that must still be a string: what is not UTF-8 is escaped
    (``b"a\\xff"`` -> ``"a\\\\xff"``); the exact bytes travel base64 beside it."""
    return raw.decode("utf-8", "backslashreplace")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def header_pair(index: int, name: bytes, value: bytes) -> tuple[str, str]:
    """The dead-letter header carrying header ``index`` that is not text."""
    return f"{HEADER_B64_PREFIX}{index}", f"{b64(name)}:{b64(value)}"


def dead_letter_headers(message: Message, failure: Failure) -> dict[str, str]:
    """The headers of ``message``'s dead letter: :meth:`Failure.headers` (the original headers
    and the failure's), plus, for an :class:`Undecodable` message, the parts that could not be
    read."""
    out = failure.headers(message)
    undecodable = message.undecodable
    if undecodable is not None:
        out[UNDECODABLE_HEADER] = ",".join(undecodable.parts)
        out.update(undecodable.headers)
    return out


class Overflow:
    """Messages dropped because a read-ahead buffer was full: :attr:`dropped` counts them, and
    :meth:`drop` logs an ERROR line at most every ``interval`` seconds with the count since the
    last one."""

    def __init__(self, logger: logging.Logger, what: str, interval: float = 10.0) -> None:
        self.logger = logger
        self.what = what
        self.interval = interval
        #: Messages dropped so far.
        self.dropped = 0
        self._reported = 0
        self._next_report = 0.0

    def drop(self, held: int, held_bytes: int, max_bytes: int | None = None) -> None:
        """Count one message dropped while ``held`` messages (``held_bytes`` bytes, of at most
        ``max_bytes``) wait."""
        self.dropped += 1
        now = time.monotonic()
        if now < self._next_report:
            return
        self._next_report = now + self.interval
        self.logger.error(
            "%s read-ahead buffer full (%d messages, %d%s bytes): dropped %d message(s) since "
            "the last report (%d in all); handlers are slower than the publishers (this "
            "backend is at-most-once; use a durable one to keep every event)",
            self.what,
            held,
            held_bytes,
            "" if max_bytes is None else f" of {max_bytes}",
            self.dropped - self._reported,
            self.dropped,
        )
        self._reported = self.dropped
