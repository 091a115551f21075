"""Which dead letters an operation takes: filters on topic, reason, handler, error type, time
and event id. Pure."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dispytch.dead_letter import DeadLetter
from dispytch.errors import ConfigurationError

__all__ = ["EVERYTHING", "Selection", "event_id", "parse_time"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}

#: Reads an event id out of a payload (``None`` when it cannot).
IdReader = Callable[[bytes], str | None]


@dataclass(frozen=True, slots=True)
class Selection:
    """Dead letters to take: each non-empty criterion must match (an empty one takes all).

    Args:
        topics: original topics.
        reasons: ``decode``, ``validation``, ``handler``, ``redelivery``, ``middleware``.
        handlers: handler names (as in the ``x-dispytch-handler`` header).
        error_types: exception class names (``ValueError``, ``TooManyDeliveries``...).
        since: failures at or after this time (ms since the epoch).
        until: failures before this time (ms since the epoch).
        event_ids: event ids (read from the envelope in the payload).
    """

    topics: frozenset[str] = field(default_factory=frozenset)
    reasons: frozenset[str] = field(default_factory=frozenset)
    handlers: frozenset[str] = field(default_factory=frozenset)
    error_types: frozenset[str] = field(default_factory=frozenset)
    since: int | None = None
    until: int | None = None
    event_ids: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(
        cls,
        *,
        topics: Iterable[str] = (),
        reasons: Iterable[str] = (),
        handlers: Iterable[str] = (),
        error_types: Iterable[str] = (),
        since: int | str | datetime | None = None,
        until: int | str | datetime | None = None,
        event_ids: Iterable[str] = (),
        now_ms: int | None = None,
    ) -> Selection:
        """A selection; ``since``/``until`` take ms, a datetime, ISO 8601 text or a time ago
        (``"30m"``, ``"2h"``, ``"7d"``)."""
        return cls(
            frozenset(topics),
            frozenset(reasons),
            frozenset(handlers),
            frozenset(error_types),
            None if since is None else parse_time(since, now_ms),
            None if until is None else parse_time(until, now_ms),
            frozenset(event_ids),
        )

    def matches(self, letter: DeadLetter, read_id: IdReader | None = None) -> bool:
        """Whether ``letter`` is selected; ``read_id`` reads event ids (default: JSON and
        MessagePack envelopes)."""
        headers = letter.headers
        if self.topics and letter.topic not in self.topics:
            return False
        if self.reasons and headers.get("x-dispytch-reason", "") not in self.reasons:
            return False
        if self.handlers and headers.get("x-dispytch-handler", "") not in self.handlers:
            return False
        if self.error_types and headers.get("x-dispytch-error-type", "") not in self.error_types:
            return False
        if self.since is not None or self.until is not None:
            failed = letter.failed_at
            if failed is None:
                return False
            if self.since is not None and failed < self.since:
                return False
            if self.until is not None and failed >= self.until:
                return False
        if self.event_ids:
            return (read_id or event_id)(letter.payload) in self.event_ids
        return True


#: The selection that takes every dead letter.
EVERYTHING = Selection()


def parse_time(value: int | str | datetime, now_ms: int | None = None) -> int:
    """``value`` as ms since the epoch: ms as an int, a datetime (naive ones are UTC), ISO 8601
    text, or a time ago such as ``"90s"``, ``"30m"``, ``"2h"``, ``"7d"``, ``"1w"``."""
    if isinstance(value, bool):
        raise ConfigurationError(f"not a time: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(stamp.timestamp() * 1000)
    text = str(value).strip()
    relative = _RELATIVE.match(text)
    if relative:
        now = now_ms if now_ms is not None else int(datetime.now(UTC).timestamp() * 1000)
        return now - int(float(relative.group(1)) * _UNIT_MS[relative.group(2)])
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"not a time: {text[:80]!r}; use ISO 8601 (2024-05-01T12:00:00Z), ms since the "
            "epoch, or a time ago such as 30m, 2h, 7d"
        ) from None
    return parse_time(parsed)


def event_id(payload: bytes) -> str | None:
    """The ``id`` of the envelope in ``payload`` (JSON, else MessagePack when installed);
    ``None`` when there is none."""
    envelope = decode_envelope(payload)
    if envelope is None:
        return None
    value = envelope.get("id")
    return value if isinstance(value, str) else None


def decode_envelope(payload: bytes) -> dict[str, object] | None:
    """The envelope mapping in ``payload`` (JSON, else MessagePack when installed), without
    validating it; ``None`` when it is neither."""
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        value = _msgpack(payload)
    return value if isinstance(value, dict) else None


def _msgpack(payload: bytes) -> object:
    try:
        import msgpack
    except ImportError:  # pragma: no cover - the extra is not installed
        return None
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:
        return None
