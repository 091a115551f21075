"""Per-event Kafka settings, set as an event's ``__backend_config__``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["KafkaEventConfig"]


class KafkaEventConfig(BaseModel):
    """How an event is produced to Kafka.

    Attributes:
        partition_key: the record key (``bytes`` as is, ``str`` as UTF-8, anything else as
            ``str(value)``). Records with one key go to one partition, and listeners handle
            them one at a time, in order.
        partition: send to this partition instead of the one the key hashes to.
        timestamp_ms: the record timestamp (default: the broker's "now").
        headers: extra Kafka headers (``str`` values are sent as UTF-8).
    """

    partition_key: Any = None
    partition: int | None = None
    timestamp_ms: int | None = None
    headers: dict[str, str | bytes] | None = None
