"""How far behind a NATS consumer is, for health checks and metrics (never per message)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["jetstream_lag", "round_trip"]


async def jetstream_lag(subscriptions: Iterable[Any]) -> dict[str, int]:
    """Messages each durable consumer has not been delivered yet (JetStream's
    ``num_pending``), keyed ``stream/consumer``."""
    out: dict[str, int] = {}
    for sub in subscriptions:
        info = await sub.consumer_info()
        out[f"{info.stream_name}/{info.name}"] = int(info.num_pending or 0)
    return out


async def round_trip(connection: Any, timeout: float = 5.0) -> None:
    """A PING/PONG with the server; raises when it does not answer (core NATS keeps no
    backlog)."""
    if not connection.is_connected:
        raise ConnectionError("not connected to the NATS server")
    await connection.flush(timeout)
