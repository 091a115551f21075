"""The AMQP 0-9-1 frames of one ``basic.publish``, marshalled with ``struct``. Pure.

``basic.publish`` + content header + body frames, byte for byte what pamqp writes, at a tenth of
its cost for the common message (persistent, a ``message_id``, optional headers). Any other
properties are marshalled by pamqp itself.
"""

from __future__ import annotations

import struct

from pamqp import frame as pamqp_frame
from pamqp.commands import Basic
from pamqp.common import FieldTable
from pamqp.encode import field_table
from pamqp.header import ContentHeader

__all__ = ["publish_frames"]

_END = b"\xce"
_FRAME = struct.Struct(">BHI")  # type, channel, size
_METHOD_BASIC_PUBLISH = struct.pack(">HHH", 60, 40, 0)  # class, method, reserved ticket
_HEADER = struct.Struct(">HHQH")  # class, weight, body size, property flags
_PERSISTENT = b"\x02"
# Property flag bits, highest first (AMQP 0-9-1 basic class).
_HEADERS_FLAG = 1 << 13
_DELIVERY_MODE_FLAG = 1 << 12
_MESSAGE_ID_FLAG = 1 << 7


def _short_string(value: str, what: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        raise ValueError(f"the {what} {value[:40]!r}... is {len(data)} bytes; AMQP allows 255")
    return bytes((len(data),)) + data


def publish_frames(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    max_body: int,
    *,
    message_id: str,
    headers: FieldTable | None = None,
    properties: Basic.Properties | None = None,
) -> bytes:
    """All frames of one mandatory publish of ``body``.

    With ``properties`` (already holding ``message_id``) pamqp marshals the content header;
    without, the message is persistent with ``message_id`` and ``headers``.
    """
    method = (
        _METHOD_BASIC_PUBLISH
        + _short_string(exchange, "exchange name")
        + _short_string(routing_key, "routing key")
        + b"\x01"  # mandatory, not immediate
    )
    parts = [_FRAME.pack(1, channel, len(method)), method, _END]
    if properties is not None:
        header = ContentHeader(properties=properties, body_size=len(body))
        parts.append(pamqp_frame.marshal(header, channel))
    else:
        flags = _DELIVERY_MODE_FLAG | _MESSAGE_ID_FLAG
        table = b""
        if headers:
            flags |= _HEADERS_FLAG
            table = field_table(headers)
        payload = b"".join(
            (
                _HEADER.pack(60, 0, len(body), flags),
                table,
                _PERSISTENT,
                _short_string(message_id, "message id"),
            )
        )
        parts += (_FRAME.pack(2, channel, len(payload)), payload, _END)
    for start in range(0, len(body), max_body):
        chunk = body[start : start + max_body]
        parts += (_FRAME.pack(3, channel, len(chunk)), chunk, _END)
    return b"".join(parts)
