"""How far behind a RabbitMQ consumer is, for health checks and metrics (never per message)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["queue_depths"]


async def queue_depths(queues: Iterable[Any]) -> dict[str, int]:
    """Messages ready in each queue (a passive ``queue.declare``: RabbitMQ's queue depth,
    deliveries not yet acknowledged left out)."""
    out: dict[str, int] = {}
    for queue in queues:
        channel = await queue.channel.get_underlay_channel()
        declared = await channel.queue_declare(queue.name, passive=True)
        out[queue.name] = int(declared.message_count or 0)
    return out
