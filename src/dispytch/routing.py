"""Topic patterns and route lookup. Pure: no I/O, no event loop.

A pattern such as ``user:{user_id}:events`` (``:`` being the listener's topic delimiter) matches
``user:42:events`` and captures ``{"user_id": "42"}``; a placeholder always spans one whole
segment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dispytch.errors import RegistrationError

__all__ = ["RouteTable", "TopicPattern"]

_PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")

#: How many concrete topics a route table remembers the matches of.
_TOPIC_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """A handler's topic: literal, or with ``{name}`` segments."""

    raw: str
    delimiter: str
    segments: tuple[str, ...]  # placeholder names, in order

    @classmethod
    def parse(cls, raw: str, delimiter: str = ":") -> TopicPattern:
        if not isinstance(raw, str) or not raw:
            raise RegistrationError(f"a topic must be a non-empty string, got {raw!r}")
        names: list[str] = []
        for part in raw.split(delimiter) if delimiter else [raw]:
            if "{" not in part and "}" not in part:
                continue
            match = _PLACEHOLDER.match(part)
            if match is None:
                raise RegistrationError(
                    f"topic {raw!r}: segment {part!r} mixes text and a placeholder; a placeholder "
                    f"must fill a whole segment between {delimiter!r} delimiters, like "
                    f"'user{delimiter}{{user_id}}{delimiter}events'"
                )
            if match.group(1) in names:
                raise RegistrationError(f"topic {raw!r} names {{{match.group(1)}}} twice")
            names.append(match.group(1))
        return cls(raw, delimiter, tuple(names))

    @property
    def is_literal(self) -> bool:
        return not self.segments

    def _parts(self) -> list[tuple[str, bool]]:
        parts = self.raw.split(self.delimiter) if self.delimiter else [self.raw]
        return [(p, bool(_PLACEHOLDER.match(p))) for p in parts]

    @property
    def glob(self) -> str:
        """Glob form, ``*`` for each placeholder (Redis PSUBSCRIBE, AMQP topic bindings)."""
        return self.delimiter.join("*" if ph else p for p, ph in self._parts())

    @property
    def regex(self) -> str:
        """Anchored regular expression; each placeholder is a named group of one segment."""
        if not self.delimiter:
            return re.escape(self.raw)
        one = f"[^{re.escape(self.delimiter)}]+"
        return (
            "^"
            + re.escape(self.delimiter).join(
                f"(?P<{p[1:-1]}>{one})" if ph else re.escape(p) for p, ph in self._parts()
            )
            + "$"
        )


T = TypeVar("T")


class RouteTable(Generic[T]):
    """Maps (topic, event type) to registered values, e.g. handlers.

    Literal topics are a dict lookup; patterns are matched once per new concrete topic and the
    result is remembered (bounded), so the per-message cost is one or two dict lookups.
    """

    def __init__(self) -> None:
        self._literal: dict[str, dict[str, list[T]]] = {}
        self._patterns: list[tuple[TopicPattern, re.Pattern[str], dict[str, list[T]]]] = []
        self._cache: dict[str, list[tuple[dict[str, list[T]], dict[str, str]]]] = {}

    def add(self, pattern: TopicPattern, event_type: str, value: T) -> None:
        self._cache.clear()
        if pattern.is_literal:
            by_type = self._literal.setdefault(pattern.raw, {})
        else:
            for known, _, types in self._patterns:
                if known == pattern:
                    by_type = types
                    break
            else:
                by_type = {}
                self._patterns.append((pattern, re.compile(pattern.regex), by_type))
        by_type.setdefault(event_type, []).append(value)

    def patterns(self) -> list[TopicPattern]:
        """Every distinct topic pattern, literal ones first (what a consumer subscribes to)."""
        lits = [TopicPattern(raw, "", ()) for raw in self._literal]
        return lits + [pattern for pattern, _, _ in self._patterns]

    def _topic_entries(self, topic: str) -> list[tuple[dict[str, list[T]], dict[str, str]]]:
        entries = self._cache.get(topic)
        if entries is None:
            entries = []
            literal = self._literal.get(topic)
            if literal is not None:
                entries.append((literal, {}))
            for _, compiled, by_type in self._patterns:
                match = compiled.match(topic)
                if match is not None:
                    entries.append((by_type, match.groupdict()))
            if len(self._cache) >= _TOPIC_CACHE_SIZE:
                self._cache.clear()
            self._cache[topic] = entries
        return entries

    def lookup(self, topic: str, event_type: str) -> list[tuple[T, dict[str, str]]]:
        """Values registered for this topic and type, each with the captured segments."""
        return [
            (value, segments)
            for by_type, segments in self._topic_entries(topic)
            for value in by_type.get(event_type, ())
        ]

    def values(self) -> Iterable[T]:
        for by_type in self._literal.values():
            for values in by_type.values():
                yield from values
        for _, _, by_type in self._patterns:
            for values in by_type.values():
                yield from values
