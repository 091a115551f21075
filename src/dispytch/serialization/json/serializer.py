"""The JSON serializer, the default: bytes identical to Dispytch 0.10's."""

from __future__ import annotations

import codecs
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dispytch.serialization.json.envelope import envelope_json, envelopes_json
from dispytch.serialization.serializer import Serializer

if TYPE_CHECKING:
    from dispytch.events import EventBase

__all__ = ["JSONSerializer"]


class JSONSerializer(Serializer):
    """``json.dumps`` of the envelope, as Dispytch 0.10 wrote it.

    Events are written by pydantic-core straight from the model (see
    :mod:`dispytch.serialization.json.envelope`), with the same bytes; a subclass that
    overrides :meth:`serialize` gets it called for every event instead, and one that overrides
    :meth:`serialize_event` gets that called for every event of ``emit_many`` too.
    """

    content_type = "application/json"

    def __init__(self, encoding: str = "utf-8") -> None:
        self.encoding = encoding
        # The direct path writes ASCII only, which is these encodings' bytes too.
        self._direct = type(self).serialize is JSONSerializer.serialize and codecs.lookup(
            encoding
        ).name in ("utf-8", "ascii")
        # emit_many writes a run in one go only when serialize_event is this class's too.
        self._batched = (
            self._direct and type(self).serialize_event is JSONSerializer.serialize_event
        )

    def serialize(self, payload: dict[str, Any]) -> bytes:
        return json.dumps(payload).encode(self.encoding)

    def serialize_event(self, event: EventBase, timestamp_ms: int | None = None) -> bytes:
        if self._direct:
            data = envelope_json(event, timestamp_ms)
            if data is not None:
                return data
        return self.serialize(event.envelope(timestamp_ms))

    def serialize_events(self, events: Sequence[EventBase], timestamp_ms: int) -> list[bytes]:
        if not self._batched:
            return super().serialize_events(events, timestamp_ms)
        serialize = self.serialize
        return [
            data if data is not None else serialize(event.envelope(timestamp_ms))
            for event, data in zip(events, envelopes_json(events, timestamp_ms), strict=True)
        ]
