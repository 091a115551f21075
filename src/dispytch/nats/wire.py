"""How Dispytch data maps onto NATS messages: headers, the key, incoming deliveries."""

from __future__ import annotations

import base64
from collections.abc import Mapping

from nats.aio.msg import Msg

from dispytch.listener.consumer import Message

__all__ = ["KEY_B64_HEADER", "KEY_HEADER", "decode_key", "nats_headers", "to_message"]

#: Carries the ordering key when it is UTF-8 text (NATS messages have no key of their own).
KEY_HEADER = "x-dispytch-key"
#: Carries a key that is not UTF-8, base64-encoded (NATS header values are text).
KEY_B64_HEADER = "x-dispytch-key-b64"
#: JetStream's message id (set by the publisher, used to drop duplicates).
MSG_ID_HEADER = "Nats-Msg-Id"

_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def nats_headers(headers: Mapping[str, str] | None, key: bytes | None) -> dict[str, str] | None:
    """Headers safe to put on the wire, with the key added; ``None`` when there are none.

    A CR or LF in a value would end the NATS header block early (and corrupt the message), so
    they become spaces: error messages in dead-letter headers often span lines.
    """
    out: dict[str, str] = {}
    if headers:
        for name, value in headers.items():
            out[name] = value.translate(_NEWLINES) if ("\n" in value or "\r" in value) else value
    if key is not None:
        try:
            out[KEY_HEADER] = key.decode()
        except UnicodeDecodeError:
            out[KEY_B64_HEADER] = base64.b64encode(key).decode()
        else:
            if "\n" in out[KEY_HEADER] or "\r" in out[KEY_HEADER]:
                del out[KEY_HEADER]
                out[KEY_B64_HEADER] = base64.b64encode(key).decode()
    return out or None


def decode_key(headers: Mapping[str, str]) -> bytes | None:
    text = headers.get(KEY_HEADER)
    if text is not None:
        return text.encode()
    packed = headers.get(KEY_B64_HEADER)
    return base64.b64decode(packed) if packed is not None else None


def to_message(msg: Msg) -> Message:
    """The listener's view of one JetStream delivery; the nats-py message rides in ``extra``."""
    headers = msg.headers or {}
    meta = msg.metadata
    return Message(
        topic=msg.subject,
        payload=msg.data,
        key=decode_key(headers) if headers else None,
        headers=headers,
        delivery_attempt=meta.num_delivered,
        partition=None,
        offset=meta.sequence.stream,
        extra=msg,
        message_id=headers.get(MSG_ID_HEADER) if headers else None,
    )
