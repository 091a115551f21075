"""Text that came off the wire, made safe for a log line or an error message.

A topic, an event id or a header value is written by whoever can publish to the broker. Put in a
log line as is, a newline forges a second log record and a megabyte value floods the log; so every
untrusted value goes through :func:`loggable` first.
"""

from __future__ import annotations

__all__ = ["loggable"]

#: Longest untrusted value written into one log line or error message, in characters.
MAX_LOGGED_CHARS = 200

# Every C0/C1 control character, DEL and the Unicode line/paragraph separators, escaped.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029", 0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})


def loggable(value: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """``value`` as one printable line of at most about ``limit`` characters.

    Bytes that are not UTF-8 are shown with backslash escapes; control characters are escaped;
    a longer value is cut and says how much was left out.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    if not text.isprintable():
        text = text.translate(_ESCAPES)
    return f"{text}…(+{cut} chars)" if cut > 0 else text
