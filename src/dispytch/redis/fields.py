"""How a message is laid out in a stream entry (Streams messages and dead letters). Pure.

An entry has these fields (names are ASCII bytes):

* ``payload``: the message bytes (the Dispytch envelope). The only field a producer must write;
  an entry without it is not handled: it is dead-lettered (reason ``decode``) with every field
  it has, base64-encoded (see :func:`dispytch.redis.records.entry_message`).
* ``key`` (optional): the ordering key; messages sharing a key are handled one at a time.
* ``h:<name>`` (optional, one per header): a header value, UTF-8 text. Dead letters carry their
  failure details this way (``h:x-dispytch-reason``...). An entry with a header name or value
  that is not UTF-8 is dead-lettered too, the header base64-encoded.

Other fields are ignored, so entries written by other tools with a ``payload`` field are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["HEADER_PREFIX", "KEY_FIELD", "PAYLOAD_FIELD", "decode_fields", "encode_fields"]

PAYLOAD_FIELD = b"payload"
KEY_FIELD = b"key"
HEADER_PREFIX = b"h:"

# Most entries have no headers; one shared empty mapping saves a dict per message.
NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def encode_fields(
    payload: bytes, key: bytes | None, headers: Mapping[str, str] | None
) -> dict[Any, Any]:
    """The XADD fields of one message; ``payload`` first."""
    fields: dict[Any, Any] = {PAYLOAD_FIELD: payload}
    if key is not None:
        fields[KEY_FIELD] = key
    if headers:
        for name, value in headers.items():
            fields[HEADER_PREFIX + name.encode()] = value.encode()
    return fields


def decode_fields(
    fields: Mapping[bytes, bytes] | None,
) -> tuple[bytes, bytes | None, Mapping[str, str]] | None:
    """``(payload, key, headers)`` of an entry's fields (read with ``decode_responses=False``);
    ``None`` when Dispytch cannot read the entry: no ``payload`` field, or a header whose name or
    value is not UTF-8. Never raises."""
    if not fields:
        return None
    payload = fields.get(PAYLOAD_FIELD)
    if type(payload) is not bytes:
        return None
    if len(fields) == 1:  # the common case: payload only
        return payload, None, NO_HEADERS
    key = fields.get(KEY_FIELD)
    headers: dict[str, str] | None = None
    try:
        for name, value in fields.items():
            if name.startswith(HEADER_PREFIX):
                if headers is None:
                    headers = {}
                headers[name[2:].decode()] = value.decode()
    except (UnicodeDecodeError, AttributeError):
        return None
    return payload, key if type(key) is bytes else None, NO_HEADERS if headers is None else headers
