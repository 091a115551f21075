"""Dead letters: a permanently failed message's original bytes plus headers saying what failed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeadLetter", "dead_letter_topic", "fallback_topic"]

#: Suffix of the dead-letter destination of a topic: ``orders`` -> ``orders.dlq``.
DEAD_LETTER_SUFFIX = ".dlq"
#: Prefix of the fixed fallback destination of a consumer group, used when a topic's own
#: dead-letter destination keeps failing: group ``billing`` -> ``dispytch.dlq.billing``. The
#: original topic is in each dead letter's ``x-dispytch-original-topic`` header.
DEAD_LETTER_FALLBACK_PREFIX = "dispytch.dlq."


def dead_letter_topic(topic: str) -> str:
    return topic + DEAD_LETTER_SUFFIX


def fallback_topic(group: str) -> str:
    return DEAD_LETTER_FALLBACK_PREFIX + group


@dataclass(slots=True)
class DeadLetter:
    """A dead-lettered message, as read back from its dead-letter destination."""

    topic: str  # the original topic
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    key: bytes | None = None
    #: Where it is stored (``orders.dlq``, ``dispytch.dlq.billing``...), when read by a
    #: :class:`~dispytch.dlq.DeadLetterStore`.
    destination: str = field(default="", compare=False)
    #: Its place there (a stream entry id, a stream sequence, an offset), as text.
    position: str = field(default="", compare=False)
    #: The store's own handle (what it needs to remove it).
    handle: Any = field(default=None, compare=False, repr=False)

    @property
    def reason(self) -> str:
        """``decode``, ``validation``, ``handler`` or ``redelivery``."""
        return self.headers.get("x-dispytch-reason", "")

    @property
    def error(self) -> str:
        return (
            f"{self.headers.get('x-dispytch-error-type', '')}: "
            f"{self.headers.get('x-dispytch-error-message', '')}"
        )

    @property
    def handler(self) -> str | None:
        return self.headers.get("x-dispytch-handler")

    @property
    def attempts(self) -> int:
        return _int(self.headers.get("x-dispytch-attempts"))

    @property
    def error_type(self) -> str:
        return self.headers.get("x-dispytch-error-type", "")

    @property
    def error_message(self) -> str:
        return self.headers.get("x-dispytch-error-message", "")

    @property
    def failed_at(self) -> int | None:
        """When it failed, in ms since the epoch (``None``: not recorded)."""
        value = _int(self.headers.get("x-dispytch-failed-at"), -1)
        return None if value < 0 else value


def _int(text: str | None, default: int = 0) -> int:
    """A header's integer; ``default`` when it is missing or not a (sane) integer."""
    if not text or len(text) > 20:
        return default
    try:
        return int(text)
    except ValueError:
        return default
