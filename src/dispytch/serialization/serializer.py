from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispytch.events import EventBase


class Serializer(ABC):
    """Turns an envelope dict (``id``, ``type``, ``body``, ``timestamp``) into bytes."""

    content_type: str = "application/octet-stream"

    @abstractmethod
    def serialize(self, payload: dict[str, Any]) -> bytes: ...

    def serialize_event(self, event: EventBase, timestamp_ms: int | None = None) -> bytes:
        """The bytes of ``event``'s envelope: ``serialize(event.envelope(timestamp_ms))``.

        What the emitter calls. A codec overrides it when it can write the envelope without
        building the dict first; the bytes must stay those of :meth:`serialize`.
        """
        return self.serialize(event.envelope(timestamp_ms))

    def serialize_events(self, events: Sequence[EventBase], timestamp_ms: int) -> list[bytes]:
        """The bytes of each event's envelope, all with ``timestamp_ms`` (``emit_many``)."""
        serialize_event = self.serialize_event
        return [serialize_event(event, timestamp_ms) for event in events]
