"""How far behind a Kafka consumer is, for health checks and metrics (never per message)."""

from __future__ import annotations

from typing import Any

from aiokafka.errors import IllegalStateError

__all__ = ["partition_lag"]


async def partition_lag(consumer: Any) -> dict[str, int]:
    """Records after this consumer's position, summed per topic over its assigned partitions:
    the high watermark (asked from the broker, ``ListOffsets``) minus the position."""
    assigned = list(consumer.assignment())
    if not assigned:
        await consumer.topics()  # a metadata round trip: still says whether Kafka answers
        return {}
    ends = await consumer.end_offsets(assigned)
    out: dict[str, int] = {}
    for tp in assigned:
        try:
            position = await consumer.position(tp)
        except IllegalStateError:  # revoked meanwhile
            continue
        out[tp.topic] = out.get(tp.topic, 0) + max(ends.get(tp, 0) - position, 0)
    return out
