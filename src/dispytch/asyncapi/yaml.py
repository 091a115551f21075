"""A small YAML emitter for JSON-like data (dicts, lists, str, int, float, bool, None).

Enough for an AsyncAPI document without a PyYAML dependency: block style, keys in their
insertion order, and every string that could read as something else (a number, ``true``,
``null``, a ``#`` comment, ``: `` inside...) double-quoted with JSON escapes, which YAML's
double-quoted style accepts as they are. The output loads back to the same data with any YAML
1.1 or 1.2 loader.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dump_yaml"]

# A plain (unquoted) scalar: starts with a letter, underscore or slash and holds no character
# YAML treats specially in the middle of a plain scalar.
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./\-]*(?: [A-Za-z0-9_./\-]+)*")
# Words that YAML 1.1 loaders read as booleans or null, in any case.
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"})


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value, ensure_ascii=True)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _lines(value: Any, indent: str, out: list[str]) -> None:
    """Append the block lines of a non-empty mapping or sequence."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            head = f"{indent}{_scalar(str(key))}:"
            if _is_block(item):
                out.append(head)
                # Sequences under a key sit at the key's indentation (common YAML style).
                _lines(item, indent if _is_seq(item) else indent + "  ", out)
            else:
                out.append(f"{head} {_inline(item)}")
        return
    for item in value:
        if _is_block(item):
            sub: list[str] = []
            _lines(item, indent + "  ", sub)
            first = sub[0]
            out.append(f"{indent}- {first[len(indent) + 2 :]}")
            out.extend(sub[1:])
        else:
            out.append(f"{indent}- {_inline(item)}")


def _is_seq(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _is_block(value: Any) -> bool:
    return (isinstance(value, Mapping) or _is_seq(value)) and len(value) > 0


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if _is_seq(value):
        return "[]"
    return _scalar(value)


def dump_yaml(data: Any) -> str:
    """``data`` as a YAML document (block style, ends with a newline)."""
    if not _is_block(data):
        return _inline(data) + "\n"
    out: list[str] = []
    _lines(data, "", out)
    return "\n".join(out) + "\n"
