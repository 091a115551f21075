"""The MessagePack serializer: bytes identical to Dispytch 0.10's."""

from __future__ import annotations

from typing import Any

import msgpack

from dispytch.serialization.serializer import Serializer

__all__ = ["MessagePackSerializer"]


class MessagePackSerializer(Serializer):
    content_type = "application/msgpack"

    def serialize(self, payload: dict[str, Any]) -> bytes:
        data: bytes = msgpack.packb(payload, use_bin_type=True)
        return data
