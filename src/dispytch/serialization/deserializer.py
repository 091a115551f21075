from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from dispytch.errors import DecodeError
from dispytch.events import Envelope

#: Bigger payloads are refused before any parsing, so one hostile message cannot eat the heap.
DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024


class Deserializer(ABC):
    """Turns a message's bytes into an :class:`Envelope`; raises DecodeError on bad input."""

    @abstractmethod
    def deserialize(self, payload: bytes) -> Envelope: ...


def envelope_from_mapping(data: Any) -> Envelope:
    """Check the decoded envelope's shape without copying its body."""
    if type(data) is not dict:
        raise DecodeError(f"envelope must be an object, got {type(data).__name__}")
    try:
        id_ = data["id"]
        type_ = data["type"]
        body = data["body"]
    except KeyError as exc:
        raise DecodeError(f"envelope has no {exc.args[0]!r} field") from None
    timestamp = data.get("timestamp", 0)
    if type(id_) is not str or type(type_) is not str:
        raise DecodeError("envelope 'id' and 'type' must be strings")
    if type(body) is not dict:
        raise DecodeError(f"envelope 'body' must be an object, got {type(body).__name__}")
    if type(timestamp) is not int:
        if isinstance(timestamp, float) and timestamp.is_integer():
            timestamp = int(timestamp)
        else:
            raise DecodeError("envelope 'timestamp' must be an integer (milliseconds)")
    return Envelope(id_, type_, body, timestamp)
