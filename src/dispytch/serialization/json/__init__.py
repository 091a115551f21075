"""JSON codec, the default. Byte-compatible with Dispytch 0.10."""

from __future__ import annotations

import json
from typing import Any

from dispytch.errors import DecodeError
from dispytch.events import Envelope
from dispytch.serialization.deserializer import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Deserializer,
    envelope_from_mapping,
)
from dispytch.serialization.serializer import Serializer

__all__ = ["JSONDeserializer", "JSONSerializer"]


class JSONSerializer(Serializer):
    content_type = "application/json"

    def __init__(self, encoding: str = "utf-8") -> None:
        self.encoding = encoding

    def serialize(self, payload: dict[str, Any]) -> bytes:
        return json.dumps(payload).encode(self.encoding)


class JSONDeserializer(Deserializer):
    def __init__(
        self, encoding: str = "utf-8", max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    ) -> None:
        self.encoding = encoding
        self.max_payload_bytes = max_payload_bytes

    def deserialize(self, payload: bytes) -> Envelope:
        if len(payload) > self.max_payload_bytes:
            raise DecodeError(
                f"payload of {len(payload)} bytes exceeds max_payload_bytes="
                f"{self.max_payload_bytes}"
            )
        try:
            data = json.loads(payload.decode(self.encoding))
        except RecursionError:
            raise DecodeError("JSON nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"not valid JSON: {exc}") from None
        return envelope_from_mapping(data)
