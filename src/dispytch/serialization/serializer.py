from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Serializer(ABC):
    """Turns an envelope dict (``id``, ``type``, ``body``, ``timestamp``) into bytes."""

    content_type: str = "application/octet-stream"

    @abstractmethod
    def serialize(self, payload: dict[str, Any]) -> bytes: ...
