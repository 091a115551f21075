"""Messages a backend adapter cannot hand to the listener at all.

When the broker metadata of a delivery cannot be decoded (a Kafka header name or an AMQP
routing key that is not UTF-8, say), no handler can be chosen for it. The adapter then settles
it itself, by one rule: it becomes a **dead letter** (its raw bytes, the metadata that could be
read, the rest base64-encoded with a header saying so) through the consumer's own dead-letter
destination, retried a few times with backoff and then sent to the consumer's fallback
destination; where the consumer has no destination it is **skipped**, with an ERROR log line
and a count in ``consumer.skipped``. If neither destination takes it, :class:`DeadLetterError`
is raised: the listener stops and nothing is acknowledged.

Adapters that decode into a :class:`Message` first (Redis, NATS) mark such a message with an
:class:`Undecodable` in ``extra``: which parts could not be read, and those parts
base64-encoded for the dead letter's ``x-dispytch-undecodable*`` headers
(:func:`dead_letter_headers`); :meth:`Undecodable.failure` is the failure to settle it with
(reason ``decode``).

**No room left.** A broker that pushes without backpressure (Redis Pub/Sub, core NATS) fills
the adapter's read-ahead buffer faster than handlers empty it; past its bounds the adapter
drops what arrives and reports it with an :class:`Overflow` (a counter, and an ERROR line at
most every 10 seconds).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dispytch.errors import DeadLetterError
from dispytch.seam import Failure, Message
from dispytch.untrusted import loggable

__all__ = [
    "UNDECODABLE_HEADER",
    "Overflow",
    "Undecodable",
    "b64",
    "dead_letter_headers",
    "settle_poison",
    "shown",
]

#: Delays between attempts at the dead-letter destination before the fallback is tried.
RETRY_DELAYS = (0.2, 1.0)


class _PoisonSink(Protocol):
    skipped: int

    async def dead_letter(self, message: Message, failure: Failure) -> bool: ...

    async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool: ...


async def settle_poison(
    consumer: _PoisonSink, message: Message, failure: Failure, logger: logging.Logger
) -> None:
    """Dead-letter (or, without a destination, skip) a message no handler can be chosen for.

    Returns once it is stored (or skipped): the caller then acknowledges it. Raises
    :class:`DeadLetterError` when neither the destination nor the fallback stored it.
    """
    where = f"{loggable(message.topic)}" + (
        "" if message.offset is None else f" [{message.partition}@{message.offset}]"
    )
    error: Exception | None = None
    for delay in (*RETRY_DELAYS, None):
        try:
            stored = await consumer.dead_letter(message, failure)
        except Exception as exc:
            error = exc
            logger.warning(
                "could not dead-letter an undecodable message from %s (%s: %s)%s",
                where,
                type(exc).__name__,
                loggable(exc),
                "" if delay is None else f"; retrying in {delay}s",
            )
            if delay is not None:
                await asyncio.sleep(delay)
            continue
        if not stored:
            consumer.skipped += 1
            logger.error(
                "SKIPPED a message from %s that cannot be handled (%s); there is no "
                "dead-letter destination (%d skipped so far)",
                where,
                failure.error_message,
                consumer.skipped,
            )
            return
        logger.error("dead-lettered a message from %s: %s", where, failure.error_message)
        return
    try:
        stored = await consumer.dead_letter_fallback(message, failure)
    except Exception as exc:
        raise DeadLetterError(
            f"a message from {where} that cannot be handled ({failure.error_message}) could be "
            f"stored neither in its dead-letter destination ({type(error).__name__}: "
            f"{loggable(error)}) nor in the fallback one ({type(exc).__name__}: "
            f"{loggable(exc)}); nothing was acknowledged. Fix the dead-letter destination and "
            "restart"
        ) from exc
    if not stored:
        raise DeadLetterError(
            f"a message from {where} that cannot be handled ({failure.error_message}) could not "
            f"be dead-lettered ({type(error).__name__}: {loggable(error)}) and this consumer has "
            "no fallback destination; nothing was acknowledged. Fix the dead-letter "
            "destination and restart"
        ) from error
    logger.error(
        "dead-lettered a message from %s to the fallback destination: %s",
        where,
        failure.error_message,
    )


#: Which parts of a dead letter's original could not be decoded, comma-separated
#: (``topic``, ``key``, ``headers``, ``payload``).
UNDECODABLE_HEADER = "x-dispytch-undecodable"
#: The original topic's raw bytes, base64 (``x-dispytch-original-topic`` shows them escaped).
TOPIC_B64_HEADER = "x-dispytch-original-topic-b64"
#: Prefix of one header per header that was not text: ``<base64 name>:<base64 value>``.
HEADER_B64_PREFIX = "x-dispytch-undecodable-header-"


@dataclass(slots=True, frozen=True)
class Undecodable:
    """``Message.extra`` of a message whose broker metadata could not be decoded.

    Attributes:
        parts: what could not be decoded: ``"topic"``, ``"key"``, ``"headers"``, ``"payload"``
            (a Redis stream entry without a ``payload`` field).
        detail: one line saying what was wrong, for the dead letter's error message.
        headers: the raw parts, base64-encoded, added to the dead letter's headers.
        extra: the backend's own handle of the message (what ``extra`` would have been).
    """

    parts: tuple[str, ...]
    detail: str
    headers: Mapping[str, str]
    extra: Any = None

    def failure(self) -> Failure:
        """The failure a dead letter of this message records (reason ``decode``)."""
        return Failure(
            "decode", "UndecodableMetadata", self.detail, None, 1, int(time.time() * 1000)
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
    extra = message.extra
    if isinstance(extra, Undecodable):
        out[UNDECODABLE_HEADER] = ",".join(extra.parts)
        out.update(extra.headers)
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
