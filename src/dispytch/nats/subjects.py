"""NATS subject arithmetic: which filters cover or overlap which. Pure, no I/O.

A subject is ``.``-separated tokens; in a filter ``*`` matches one token and a final ``>``
matches one or more. JetStream refuses a stream whose subjects overlap each other (or another
stream's), so the backend merges overlapping subjects before it updates a stream.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

__all__ = ["consumer_name", "covers", "merge_subjects", "overlaps", "widen"]

#: Characters a consumer (durable) name may not hold: they would break the API subjects.
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")


def covers(wide: str, narrow: str) -> bool:
    """Every subject ``narrow`` matches is matched by ``wide`` too."""
    w = wide.split(".")
    n = narrow.split(".")
    for i, token in enumerate(w):
        if token == ">":
            return len(n) > i
        if i >= len(n):
            return False
        if n[i] == ">":
            return False
        if token != "*" and token != n[i]:
            return False
    return len(w) == len(n)


def overlaps(a: str, b: str) -> bool:
    """Some subject is matched by both ``a`` and ``b``."""
    x = a.split(".")
    y = b.split(".")
    for i in range(max(len(x), len(y))):
        s = x[i] if i < len(x) else None
        t = y[i] if i < len(y) else None
        if s == ">" or t == ">":
            return s is not None and t is not None
        if s is None or t is None:
            return False
        if s != t and s != "*" and t != "*":
            return False
    return True


def widen(a: str, b: str) -> str:
    """The narrowest filter of this shape that covers both ``a`` and ``b``."""
    x = a.split(".")
    y = b.split(".")
    out: list[str] = []
    for i in range(max(len(x), len(y))):
        s = x[i] if i < len(x) else None
        t = y[i] if i < len(y) else None
        if s is None or t is None or s == ">" or t == ">":
            out.append(">")
            break
        out.append(s if s == t else "*")
    return ".".join(out)


def merge_subjects(current: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """``current`` plus ``wanted``, with no two subjects overlapping.

    A wanted subject already covered is skipped; one that covers existing subjects replaces
    them; one that partly overlaps another is widened with it (``a.b.*`` and ``a.*.c`` become
    ``a.*.*``), so the stream may store a little more than asked, never less.
    """
    subjects = list(dict.fromkeys(current))
    for subject in wanted:
        if any(covers(s, subject) for s in subjects):
            continue
        merged = subject
        changed = True
        while changed:
            changed = False
            for existing in subjects:
                if overlaps(existing, merged):
                    merged = widen(existing, merged)
                    subjects.remove(existing)
                    changed = True
                    break
        subjects = [s for s in subjects if not covers(merged, s)]
        subjects.append(merged)
    return subjects


def consumer_name(group: str, filter_subject: str) -> str:
    """The durable consumer name of ``group`` for ``filter_subject``: readable and unique.

    Durable names cannot hold ``.``, ``*``, ``>`` or whitespace; a hash of the exact pair keeps
    names distinct after those are replaced.
    """
    digest = hashlib.sha256(f"{group}\0{filter_subject}".encode()).hexdigest()[:10]
    readable = _NOT_IN_NAME.sub("_", group)[:60] + "__" + _NOT_IN_NAME.sub("_", filter_subject)
    return f"{readable[:180]}_{digest}"
