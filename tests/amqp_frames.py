"""AMQP 0-9-1 frames byte by byte, for tests that play a hostile publisher: any bytes where
pamqp would only write UTF-8 (routing keys, header names, short-string properties) and any
64-bit timestamp."""

from __future__ import annotations

import struct
from collections.abc import Sequence


def short(data: bytes) -> bytes:
    """An AMQP short string (one length byte)."""
    return bytes((len(data),)) + data


def frame(kind: int, payload: bytes, channel: int = 1) -> bytes:
    """One frame: 1 method, 2 content header, 3 body."""
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def content_header(
    body_size: int,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    message_id: bytes | None = None,
    timestamp: int | None = None,
    persistent: bool = False,
) -> bytes:
    """The payload of a content header frame: headers (long-string values), delivery mode,
    message id and timestamp, as given."""
    flags, props = 0, b""
    if headers:
        table = b"".join(short(k) + b"S" + struct.pack(">I", len(v)) + v for k, v in headers)
        flags |= 0x2000
        props += struct.pack(">I", len(table)) + table
    if persistent:
        flags |= 0x1000
        props += b"\x02"
    if message_id is not None:
        flags |= 0x0080
        props += short(message_id)
    if timestamp is not None:
        flags |= 0x0040
        props += struct.pack(">Q", timestamp)
    return struct.pack(">HHQH", 60, 0, body_size, flags) + props
