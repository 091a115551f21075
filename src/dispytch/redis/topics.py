"""Topic patterns as Redis globs (``PSUBSCRIBE`` and ``SCAN … MATCH``). Pure."""

from __future__ import annotations

import re

from dispytch.broker_retries import RETRY_DESTINATION_PREFIX
from dispytch.dead_letter import DEAD_LETTER_SUFFIX
from dispytch.routing import TopicPattern

__all__ = ["PatternMatcher", "escape_glob", "subscription_glob"]

# Characters Redis' glob matcher (stringmatchlen) treats specially; a backslash escapes each.
_GLOB_SPECIAL = {ord(c): "\\" + c for c in "\\*?[]^"}


def escape_glob(text: str) -> str:
    """``text`` as a glob that matches exactly ``text``."""
    return text.translate(_GLOB_SPECIAL)


def subscription_glob(pattern: TopicPattern) -> str:
    """The glob of a pattern (``PSUBSCRIBE``, ``SCAN … MATCH``): ``*`` per placeholder or ``*``
    segment, literal parts escaped.

    Redis' ``*`` also matches the delimiter, so ``user:*:events`` matches ``user:1:2:events``
    too; the pattern's anchored regex drops such names (the listener's route table for Pub/Sub,
    :class:`PatternMatcher` for Streams).
    """
    if pattern.is_literal:
        return escape_glob(pattern.raw)
    return pattern.glob_with(escape_glob)


class PatternMatcher:
    """Decides whether a stream found by SCAN belongs to a pattern.

    The anchored regex of the pattern filters what the glob found (``user:*:events`` must not
    pick ``user:1:2:events``). Dead-letter streams (``….dlq``) are never picked unless the
    pattern itself ends in ``.dlq``: otherwise ``user:{id}`` would consume ``user:1.dlq`` and run
    the failed messages again. Nor are the groups' retry streams (``dispytch.retry.…``).
    """

    def __init__(self, pattern: TopicPattern) -> None:
        self.pattern = pattern
        self.glob = subscription_glob(pattern)
        self._regex = re.compile(pattern.regex)
        self._dead_letters = pattern.raw.endswith(DEAD_LETTER_SUFFIX)

    def __call__(self, stream: str) -> bool:
        if not self._dead_letters and stream.endswith(DEAD_LETTER_SUFFIX):
            return False
        if stream.startswith(RETRY_DESTINATION_PREFIX):
            return False
        return self._regex.match(stream) is not None
