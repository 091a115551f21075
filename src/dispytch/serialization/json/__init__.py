"""JSON codec, the default. Byte-compatible with Dispytch 0.10."""

from __future__ import annotations

import json
from collections.abc import Callable
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

# json.loads() wraps the C scanner in two Python calls and two whitespace regex matches; a
# compact document (what serializers write) needs neither. Anything else takes json.loads.
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _loads(text: str) -> Any:
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        return json.loads(text)  # leading whitespace, or not JSON: json.loads says which
    if end != len(text):
        return json.loads(text)  # trailing whitespace is fine, trailing data raises
    return value


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
            data = _loads(payload.decode(self.encoding))
        except RecursionError:
            raise DecodeError("JSON nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"not valid JSON: {exc}") from None
        return envelope_from_mapping(data)
