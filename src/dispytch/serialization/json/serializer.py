"""The JSON serializer, the default: bytes identical to Dispytch 0.10's."""

from __future__ import annotations

import json
from typing import Any

from dispytch.serialization.serializer import Serializer

__all__ = ["JSONSerializer"]


class JSONSerializer(Serializer):
    content_type = "application/json"

    def __init__(self, encoding: str = "utf-8") -> None:
        self.encoding = encoding

    def serialize(self, payload: dict[str, Any]) -> bytes:
        return json.dumps(payload).encode(self.encoding)
