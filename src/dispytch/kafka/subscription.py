"""What a Kafka consumer subscribes to for a set of handler topics. Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dispytch.kafka.topics import NOT_DEAD_LETTER
from dispytch.routing import TopicPattern

__all__ = ["Subscription", "subscription_for"]

_NAMED_GROUP = re.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")


@dataclass(frozen=True, slots=True)
class Subscription:
    """Either a list of topics, or one regular expression (when any topic is a pattern)."""

    topics: tuple[str, ...]
    pattern: str | None

    @property
    def literal_topics(self) -> tuple[str, ...]:
        """The literal topics, also when they are folded into :attr:`pattern`."""
        return self.topics


def subscription_for(patterns: Sequence[TopicPattern]) -> Subscription:
    """Kafka subscribes to a topic list *or* to one regex, so with any pattern, all become one.

    Named groups are dropped (two patterns may name the same segment); the listener captures
    segments itself. A pattern never matches a dead-letter topic (``orders.{kind}`` does not
    receive ``orders.dlq``); a literal handler topic is matched as written, even ``x.dlq``.
    """
    literal = tuple(dict.fromkeys(p.raw for p in patterns if p.is_literal))
    dynamic = [p for p in patterns if not p.is_literal]
    if not dynamic:
        return Subscription(literal, None)
    parts = [NOT_DEAD_LETTER + _NAMED_GROUP.sub("(?:", p.regex) for p in dynamic]
    parts += ["^" + re.escape(topic) + "$" for topic in literal]
    return Subscription(literal, "|".join(f"(?:{part})" for part in parts))
