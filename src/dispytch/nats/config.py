"""Per-event NATS settings: ``__backend_config__ = NATSEventConfig(...)``."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["NATSEventConfig"]


class NATSEventConfig(BaseModel):
    """NATS settings for an event class.

    Attributes:
        partition_key: ordering key. Events sharing it are handled one at a time, in order;
            it travels in the ``x-dispytch-key`` header.
        msg_id: sent as ``Nats-Msg-Id``: JetStream stores a message with an id it saw within
            the stream's duplicate window (2 minutes by default) only once, so a retried emit
            is not stored twice.
        headers: extra NATS headers.
    """

    partition_key: str | None = None
    msg_id: str | None = None
    headers: dict[str, str] | None = None
