"""MessagePack codec (``pip install "dispytch[msgpack]"``). Byte-compatible with Dispytch 0.10."""

from __future__ import annotations

from typing import Any

from dispytch.errors import DecodeError, MissingExtraError
from dispytch.events import Envelope
from dispytch.serialization.deserializer import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Deserializer,
    envelope_from_mapping,
)
from dispytch.serialization.serializer import Serializer

try:
    import msgpack
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingExtraError("msgpack", "msgpack") from exc

__all__ = ["MessagePackDeserializer", "MessagePackSerializer"]


class MessagePackSerializer(Serializer):
    content_type = "application/msgpack"

    def serialize(self, payload: dict[str, Any]) -> bytes:
        data: bytes = msgpack.packb(payload, use_bin_type=True)
        return data


class MessagePackDeserializer(Deserializer):
    def __init__(self, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.max_payload_bytes = max_payload_bytes

    def deserialize(self, payload: bytes) -> Envelope:
        if len(payload) > self.max_payload_bytes:
            raise DecodeError(
                f"payload of {len(payload)} bytes exceeds max_payload_bytes="
                f"{self.max_payload_bytes}"
            )
        try:
            data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except RecursionError:
            raise DecodeError("MessagePack nested too deeply") from None
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise DecodeError(f"not valid MessagePack: {type(exc).__name__}: {exc}") from None
        return envelope_from_mapping(data)
