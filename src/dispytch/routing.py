"""Topic patterns and route lookup. Pure: no I/O, no event loop.

A pattern such as ``user:{user_id}:events`` (``:`` being the listener's topic delimiter) matches
``user:42:events`` and captures ``{"user_id": "42"}``; a placeholder always spans one whole
segment. A literal ``*`` segment (``user:*:events``) matches any one segment too, and binds no
parameter, as in Dispytch 0.10.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dispytch.errors import RegistrationError

__all__ = ["WILDCARD", "RouteTable", "TopicPattern"]

_PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")

#: A whole segment that matches any one segment without naming it.
WILDCARD = "*"

#: How many concrete topics a route table remembers the matches of.
_TOPIC_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """A handler's topic: literal, or with ``{name}`` and ``*`` segments."""

    raw: str
    delimiter: str
    segments: tuple[str, ...]  # placeholder names, in order
    #: Positions of the ``*`` segments.
    wildcards: tuple[int, ...] = ()

    @classmethod
    def parse(cls, raw: str, delimiter: str = ":") -> TopicPattern:
        if not isinstance(raw, str) or not raw:
            raise RegistrationError(f"a topic must be a non-empty string, got {raw!r}")
        names: list[str] = []
        wildcards: list[int] = []
        for index, part in enumerate(raw.split(delimiter) if delimiter else [raw]):
            if part == WILDCARD:
                wildcards.append(index)
                continue
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
        return cls(raw, delimiter, tuple(names), tuple(wildcards))

    @property
    def is_literal(self) -> bool:
        return not self.segments and not self.wildcards

    def _parts(self) -> list[tuple[str, str | None]]:
        """Each segment as (text, what it matches): ``None`` for literal text, ``""`` for a
        ``*``, else the placeholder's name."""
        parts = self.raw.split(self.delimiter) if self.delimiter else [self.raw]
        out: list[tuple[str, str | None]] = []
        for index, part in enumerate(parts):
            if index in self.wildcards:
                out.append((part, ""))
            else:
                match = _PLACEHOLDER.match(part)
                out.append((part, match.group(1) if match else None))
        return out

    @property
    def glob(self) -> str:
        """Glob form, ``*`` for each placeholder or ``*`` segment (AMQP topic bindings, NATS
        subjects)."""
        return self.glob_with(str)

    def glob_with(self, escape: Callable[[str], str]) -> str:
        """The glob form with literal text passed through ``escape`` (e.g. Redis' escaping)."""
        return self.delimiter.join(
            "*" if name is not None else escape(text) for text, name in self._parts()
        )

    @property
    def regex(self) -> str:
        """Anchored regular expression; each placeholder is a named group of one segment, each
        ``*`` segment an unnamed one.

        A placeholder also matches an *empty* segment (``user::events``), so that a delivered
        topic no emitter would write is routed to the segment check and dead-lettered as a
        validation failure (rule ``empty``) instead of being acknowledged unseen; a ``*``
        segment matches only a non-empty one, as in Dispytch 0.10.
        """
        if self.delimiter:
            not_delimiter = f"[^{re.escape(self.delimiter)}]"
            named, unnamed = not_delimiter + "*", not_delimiter + "+"
        else:
            named = unnamed = ".+"
        return (
            "^"
            + re.escape(self.delimiter).join(
                re.escape(text)
                if name is None
                else f"(?P<{name}>{named})"
                if name
                else f"({unnamed})"
                for text, name in self._parts()
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
