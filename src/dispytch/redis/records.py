"""What Redis hands over (a Pub/Sub message, a stream entry), as a :class:`Message`. Pure.

Channels, stream keys, field names and values are bytes written by whoever can publish. These
functions never raise on them: what Dispytch cannot read makes a message marked
:attr:`~dispytch.seam.Message.undecodable` (the listener dead-letters those at once).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from dispytch.listener.consumer import Message
from dispytch.poison import TOPIC_B64_HEADER, Undecodable, b64, header_pair, shown
from dispytch.redis.fields import HEADER_PREFIX, KEY_FIELD, PAYLOAD_FIELD, decode_fields

__all__ = ["NO_HEADERS", "channel_message", "entry_message", "stream_name"]

#: Pub/Sub messages have no headers; one shared empty mapping saves a dict per message.
NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def stream_name(raw: bytes | str) -> str | bytes:
    """How a stream key is held: as text when it is UTF-8, else as its raw bytes."""
    if type(raw) is not bytes:
        return str(raw)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def channel_message(channel: Any, data: Any) -> Message:
    """A Pub/Sub message (``channel``, ``data`` as the client returned them)."""
    payload = data if type(data) is bytes else _as_bytes(data)
    if type(channel) is not bytes:
        return Message(str(channel), payload, None, NO_HEADERS)
    try:
        return Message(channel.decode(), payload, None, NO_HEADERS)
    except UnicodeDecodeError:
        return Message(
            shown(channel),
            payload,
            None,
            NO_HEADERS,
            undecodable=Undecodable(
                ("topic",), "the channel name is not UTF-8", {TOPIC_B64_HEADER: b64(channel)}
            ),
        )


def entry_message(
    stream: str | bytes, entry_id: str, fields: Mapping[bytes, bytes] | None, attempt: int
) -> Message:
    """A stream entry of ``stream`` (as :func:`stream_name` holds it).

    ``extra`` is the entry id; for an entry Dispytch cannot read (marked
    :attr:`~dispytch.seam.Message.undecodable`) it is ``(stream, entry_id)``, as its topic may
    not be the stream's key.
    """
    decoded = decode_fields(fields)
    if decoded is not None and type(stream) is str:
        payload, key, headers = decoded
        return Message(stream, payload, key, headers, attempt, None, None, entry_id, entry_id)
    return _unreadable_entry(stream, entry_id, fields or {}, attempt)


def _unreadable_entry(
    stream: str | bytes, entry_id: str, fields: Mapping[Any, Any], attempt: int
) -> Message:
    parts: list[str] = []
    problems: list[str] = []
    raw: dict[str, str] = {}
    if type(stream) is bytes:
        parts.append("topic")
        problems.append("the stream key is not UTF-8")
        raw[TOPIC_B64_HEADER] = b64(stream)
        topic = shown(stream)
    else:
        topic = str(stream)
    payload = fields.get(PAYLOAD_FIELD)
    key = fields.get(KEY_FIELD)
    headers: dict[str, str] = {}
    bad_headers = 0
    for index, (name, value) in enumerate(fields.items()):
        name, value = _as_bytes(name), _as_bytes(value)
        if payload is None:  # keep every field: there is no payload to keep
            raw.update((header_pair(index, name, value),))
        elif name.startswith(HEADER_PREFIX):
            try:
                headers[name[2:].decode()] = value.decode()
            except UnicodeDecodeError:
                bad_headers += 1
                raw.update((header_pair(index, name, value),))
    if payload is None:
        parts.append("payload")
        problems.append(
            f"the entry has no 'payload' field ({len(fields)} field(s), kept base64-encoded)"
        )
    if bad_headers:
        parts.append("headers")
        problems.append(f"{bad_headers} header(s) are not UTF-8")
    return Message(
        topic,
        b"" if payload is None else _as_bytes(payload),
        None if key is None else _as_bytes(key),
        headers,
        attempt,
        None,
        None,
        (stream, entry_id),
        entry_id,
        undecodable=Undecodable(tuple(parts), "; ".join(problems), raw),
    )


def _as_bytes(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8", "backslashreplace")
