"""How far behind a Redis consumer is, for health checks and metrics (never per message)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["ping", "streams_lag"]


async def streams_lag(redis: Any, group: str, streams: Iterable[str | bytes]) -> dict[str, int]:
    """Entries of each stream not yet delivered to ``group``: ``XINFO GROUPS``' ``lag``
    (Redis 7+). A stream whose lag Redis cannot tell (after deletions) is left out; a stream
    name that is not UTF-8 is shown with backslash escapes."""
    wanted = group.encode()
    out: dict[str, int] = {}
    for stream in streams:
        name = stream if isinstance(stream, str) else stream.decode("utf-8", "backslashreplace")
        for info in await redis.xinfo_groups(stream):
            group_name = info.get("name")
            if isinstance(group_name, str):
                group_name = group_name.encode()
            lag = info.get("lag")
            if group_name == wanted and isinstance(lag, int):
                out[name] = lag
    return out


async def ping(redis: Any) -> None:
    """A round trip to Redis; raises when it does not answer (Pub/Sub keeps no backlog)."""
    await redis.ping()
