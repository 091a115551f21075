"""Messages an adapter cannot hand to the listener: metadata that is not text, no room left.

**Metadata that is not text.**
A topic (a channel, a stream key, a subject), a key or a header comes off the wire as bytes
written by whoever may publish to the broker. An adapter decodes them defensively: bytes that are
not what Dispytch can read never raise; the adapter builds the :class:`Message` anyway, with
``extra`` set to an :class:`Undecodable` that says which parts could not be read and carries
them base64-encoded. Such a message is never routed (its topic or key is not what a handler was
written for): the adapter dead-letters it at once with :func:`dead_letter_undecodable` (reason
``decode``, the raw parts in the ``x-dispytch-undecodable*`` headers) and acknowledges it, or,
where not even that is possible, skips it with an ERROR line and counts it.

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
from dataclasses import dataclass
from typing import Any, cast

from dispytch.listener.consumer import Consumer, Failure, Message
from dispytch.untrusted import loggable

__all__ = [
    "UNDECODABLE_HEADER",
    "Overflow",
    "Undecodable",
    "b64",
    "dead_letter_headers",
    "dead_letter_undecodable",
    "shown",
]

#: Which parts of a dead letter's original could not be decoded, comma-separated
#: (``topic``, ``key``, ``headers``, ``payload``).
UNDECODABLE_HEADER = "x-dispytch-undecodable"
#: The original topic's raw bytes, base64 (``x-dispytch-original-topic`` shows them escaped).
TOPIC_B64_HEADER = "x-dispytch-original-topic-b64"
#: Prefix of one header per header that was not text: ``<base64 name>:<base64 value>``.
HEADER_B64_PREFIX = "x-dispytch-undecodable-header-"

_PREFIX = "x-dispytch-"


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
    """The headers of ``message``'s dead letter: its original headers, then the failure's.

    Original headers named ``x-dispytch-*`` are not copied here (a publisher could forge the
    failure details with them); :meth:`Failure.headers` decides what of them is kept. For an
    :class:`Undecodable` message the raw parts are added.
    """
    out = {k: v for k, v in message.headers.items() if not k.startswith(_PREFIX)}
    out.update(failure.headers(message))
    extra = message.extra
    if isinstance(extra, Undecodable):
        out[UNDECODABLE_HEADER] = ",".join(extra.parts)
        out.update(extra.headers)
    return out


async def dead_letter_undecodable(
    consumer: Consumer, message: Message, logger: logging.Logger, *, own_destination: bool
) -> bool:
    """Store an :class:`Undecodable` message: in its own dead-letter destination (when
    ``own_destination``: its topic could be read), else or if that fails in the consumer's
    fallback one. Returns whether it was stored; logs one ERROR line either way."""
    undecodable = cast(Undecodable, message.extra)  # the adapters' own contract
    failure = undecodable.failure()
    stores = (consumer.dead_letter, consumer.dead_letter_fallback)
    errors: list[str] = []
    for store in stores if own_destination else stores[1:]:
        try:
            if await store(message, failure):
                logger.error(
                    "dead-lettered a message from %s whose %s could not be decoded: %s",
                    loggable(message.topic),
                    "/".join(undecodable.parts),
                    loggable(undecodable.detail),
                )
                return True
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    logger.error(
        "could not dead-letter a message from %s whose %s could not be decoded (%s): %s",
        loggable(message.topic),
        "/".join(undecodable.parts),
        loggable(undecodable.detail),
        loggable("; ".join(errors) or "no dead-letter destination"),
    )
    return False


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
