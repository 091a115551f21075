"""Per-event AMQP settings: ``__backend_config__ = RabbitMQEventConfig(...)``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["RabbitMQEventConfig"]


class RabbitMQEventConfig(BaseModel):
    """AMQP message properties for an event class, plus which exchange to publish to.

    Every field is optional; unset fields take the AMQP default, except ``delivery_mode``,
    which defaults to persistent (2) so a broker restart does not lose events in durable queues.

    Attributes:
        exchange: name of one of the producer's exchanges (seed style, a producer built with
            several); ``None`` picks the producer's first exchange.
        partition_key: ordering key. Events sharing it are handled one at a time, in order;
            it travels in the ``x-dispytch-key`` header.
        delivery_mode: 1 (transient) or 2 (persistent).
        priority: 0-255; honoured by queues declared with ``x-max-priority``.
        expiration: per-message TTL, in seconds (or a ``timedelta``/``datetime``).
        headers: extra AMQP headers.
        content_type, content_encoding, correlation_id, reply_to, message_id, type, app_id,
        user_id, timestamp: the AMQP basic properties of the same names.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    exchange: str | None = None
    partition_key: str | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    expiration: float | timedelta | datetime | None = None
    headers: dict[str, Any] | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    message_id: str | None = None
    type: str | None = None
    app_id: str | None = None
    user_id: str | None = None
    timestamp: datetime | float | None = None
