"""Which streams a topic pattern means: SCAN globs and the filter on what SCAN finds. Pure."""

from __future__ import annotations

import re

from dispytch.dead_letter import DEAD_LETTER_SUFFIX
from dispytch.routing import TopicPattern

__all__ = ["PatternMatcher", "escape_glob", "scan_glob"]

# Characters Redis' glob matcher treats specially; a backslash escapes each.
_GLOB_SPECIAL = {ord(c): "\\" + c for c in "\\*?[]^"}


def escape_glob(text: str) -> str:
    """``text`` as a glob that matches exactly ``text``."""
    return text.translate(_GLOB_SPECIAL)


def scan_glob(pattern: TopicPattern) -> str:
    """The ``SCAN MATCH`` glob of a pattern: ``*`` per placeholder, literal parts escaped."""
    if pattern.is_literal:
        return escape_glob(pattern.raw)
    names = {f"{{{name}}}" for name in pattern.segments}
    parts = pattern.raw.split(pattern.delimiter)
    return pattern.delimiter.join("*" if p in names else escape_glob(p) for p in parts)


class PatternMatcher:
    """Decides whether a stream found by SCAN belongs to a pattern.

    Redis' ``*`` also matches the delimiter, so the anchored regex of the pattern filters what
    the glob found (``user:*:events`` must not pick ``user:1:2:events``). Dead-letter streams
    (``….dlq``) are never picked unless the pattern itself ends in ``.dlq``: otherwise
    ``user:{id}`` would consume ``user:1.dlq`` and run the failed messages again.
    """

    def __init__(self, pattern: TopicPattern) -> None:
        self.pattern = pattern
        self.glob = scan_glob(pattern)
        self._regex = re.compile(pattern.regex)
        self._dead_letters = pattern.raw.endswith(DEAD_LETTER_SUFFIX)

    def __call__(self, stream: str) -> bool:
        if not self._dead_letters and stream.endswith(DEAD_LETTER_SUFFIX):
            return False
        return self._regex.match(stream) is not None
