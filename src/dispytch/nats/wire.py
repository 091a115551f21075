"""How Dispytch data maps onto NATS messages: headers, the key, incoming deliveries."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from nats.aio.msg import Msg

from dispytch.listener.consumer import Message
from dispytch.nats._compat import UnparsedHeaders
from dispytch.poison import TOPIC_B64_HEADER, Undecodable, b64, shown

__all__ = [
    "KEY_B64_HEADER",
    "KEY_HEADER",
    "core_message",
    "decode_key",
    "nats_headers",
    "to_message",
]

#: Carries the ordering key when it is UTF-8 text (NATS messages have no key of their own).
KEY_HEADER = "x-dispytch-key"
#: Carries a key that is not UTF-8, base64-encoded (NATS header values are text).
KEY_B64_HEADER = "x-dispytch-key-b64"
#: JetStream's message id (set by the publisher, used to drop duplicates).
MSG_ID_HEADER = "Nats-Msg-Id"
#: The header block of a message whose headers nats-py could not parse, base64.
HEADERS_B64_HEADER = "x-dispytch-undecodable-headers-b64"
#: The text of a key header that is not valid base64.
KEY_TEXT_HEADER = "x-dispytch-undecodable-key"

_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_NOT_KEY = object()


def nats_headers(headers: Mapping[str, str] | None, key: bytes | None) -> dict[str, str] | None:
    """Headers safe to put on the wire, with the key added; ``None`` when there are none.

    A CR or LF in a value would end the NATS header block early (and corrupt the message), so
    they become spaces: error messages in dead-letter headers often span lines. A value that is
    not encodable as UTF-8 (a lone surrogate) is escaped.
    """
    out: dict[str, str] = {}
    if headers:
        for name, value in headers.items():
            if "\n" in value or "\r" in value:
                value = value.translate(_NEWLINES)
            if not value.isascii():
                value = value.encode("utf-8", "backslashreplace").decode()
            out[name] = value
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
    """The key the headers carry; raises ``ValueError`` when the base64 form is not base64."""
    text = headers.get(KEY_HEADER)
    if text is not None:
        return text.encode("utf-8", "surrogateescape")  # nats-py's values have no surrogates
    packed = headers.get(KEY_B64_HEADER)
    if packed is None:
        return None
    try:
        return base64.b64decode(packed, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the x-dispytch-key-b64 header is not base64") from None


def to_message(msg: Msg) -> Message:
    """The listener's view of one JetStream delivery; the nats-py message rides in ``extra``
    (one Dispytch cannot read is marked :attr:`~dispytch.seam.Message.undecodable`)."""
    try:
        meta = msg.metadata
        attempt, offset = meta.num_delivered, meta.sequence.stream
    except Exception:  # not a JetStream delivery (no ack subject): count it as the first
        attempt, offset = 1, None
    subject = msg.subject
    headers = msg.headers
    if subject.isascii() and headers is None:  # the common case
        return Message(subject, msg.data, None, _NO_HEADERS, attempt, None, offset, msg)
    return _message(msg, attempt, offset, jetstream=True)


def core_message(msg: Msg) -> Message:
    """The listener's view of one core NATS message (no delivery count, no offset)."""
    subject = msg.subject
    if subject.isascii() and msg.headers is None:  # the common case
        return Message(subject, msg.data, None, _NO_HEADERS, 1, None, None, msg)
    return _message(msg, 1, None, jetstream=False)


def _message(msg: Msg, attempt: int, offset: int | None, *, jetstream: bool) -> Message:
    subject = msg.subject
    headers = msg.headers
    if (subject.isascii() or _utf8(subject)) and type(headers) is not UnparsedHeaders:
        if not headers:
            return Message(subject, msg.data, None, _NO_HEADERS, attempt, None, offset, msg)
        try:
            key = decode_key(headers)
        except ValueError:
            pass
        else:
            # JetStream's message id is the publisher's Nats-Msg-Id (core NATS has none).
            message_id = headers.get(MSG_ID_HEADER) if jetstream else None
            return Message(subject, msg.data, key, headers, attempt, None, offset, msg, message_id)
    return _unreadable(msg, attempt, offset)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _unreadable(msg: Msg, attempt: int, offset: int | None) -> Message:
    parts: list[str] = []
    problems: list[str] = []
    raw: dict[str, str] = {}
    subject = msg.subject
    if not _utf8(subject):
        parts.append("topic")
        problems.append("the subject is not UTF-8")
        raw_subject = subject.encode("utf-8", "surrogateescape")
        raw[TOPIC_B64_HEADER] = b64(raw_subject)
        subject = shown(raw_subject)
    headers: Any = _NO_HEADERS if msg.headers is None else msg.headers
    if type(headers) is UnparsedHeaders:
        parts.append("headers")
        problems.append("the header block could not be parsed")
        raw[HEADERS_B64_HEADER] = b64(headers.raw)
        headers = _NO_HEADERS
    key = None
    try:
        key = decode_key(headers)
    except ValueError as exc:
        parts.append("key")
        problems.append(str(exc))
        raw[KEY_TEXT_HEADER] = headers[KEY_B64_HEADER]
        headers = {k: v for k, v in headers.items() if k != KEY_B64_HEADER}
    return Message(
        subject,
        msg.data,
        key,
        headers,
        attempt,
        None,
        offset,
        msg,
        undecodable=Undecodable(tuple(parts), "; ".join(problems), raw),
    )
