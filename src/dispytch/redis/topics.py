"""Channel names and PSUBSCRIBE globs for topic patterns. Pure."""

from __future__ import annotations

from dispytch.routing import TopicPattern

__all__ = ["escape_glob", "subscription_glob"]

# Characters Redis' glob matcher (stringmatchlen) treats specially; a backslash escapes each.
_GLOB_SPECIAL = {ord(c): "\\" + c for c in "\\*?[]^"}


def escape_glob(text: str) -> str:
    """``text`` as a glob that matches exactly ``text``."""
    return text.translate(_GLOB_SPECIAL)


def subscription_glob(pattern: TopicPattern) -> str:
    """The PSUBSCRIBE glob of a pattern: ``*`` per placeholder, literal parts escaped.

    Redis' ``*`` also matches the delimiter, so ``user:*:events`` matches ``user:1:2:events``
    too; the listener's route table (an anchored regex) drops such channels, acknowledging them
    as events with no handler.
    """
    if pattern.is_literal:
        return escape_glob(pattern.raw)
    parts = pattern.raw.split(pattern.delimiter)
    names = {f"{{{name}}}" for name in pattern.segments}
    return pattern.delimiter.join("*" if part in names else escape_glob(part) for part in parts)
