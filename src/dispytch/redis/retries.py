"""Broker-delayed retries on Redis Streams: a sorted set of parked entries, moved back when due.

Per consumer group three keys:

* ``dispytch.retry.{group}.parked`` — a stream holding each delayed copy (payload, key, headers
  with the retry headers of :mod:`dispytch.broker_retries`);
* ``dispytch.retry.{group}.due`` — a sorted set: parked entry id -> due time (ms, Redis' clock);
* ``dispytch.retry.{group}`` — the stream the group reads; a due copy is appended here.

Parking (``XADD`` + ``ZADD``) and moving (``ZRANGEBYSCORE`` … ``XADD`` + ``XDEL`` + ``ZREM``)
are each one Lua script, so they are atomic: a copy is never both parked and moved, never moved
twice by two consumers, and never lost between the two keys. Due times come from the server's
``TIME``, so processes with skewed clocks agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from dispytch.broker_retries import retry_destination
from dispytch.redis.fields import encode_fields

__all__ = ["RetryScheduler"]

# KEYS: parked stream, due zset. ARGV: delay ms, then field/value pairs. Returns the due time.
_PARK = """
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('ZADD', KEYS[2], due, id)
return due
"""

# KEYS: due zset, parked stream, retry stream. ARGV: most entries to move.
# Returns {moved, ms until the next one is due (-1: none)}.
_MOVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  local entries = redis.call('XRANGE', KEYS[2], id, id)
  if entries[1] then
    redis.call('XADD', KEYS[3], '*', unpack(entries[1][2]))
    redis.call('XDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  return {#ids, math.max(0, tonumber(head[2]) - now)}
end
return {#ids, -1}
"""

#: Most copies moved by one script call (a call blocks Redis while it runs).
_MOVE_BATCH = 500


class RetryScheduler:
    """Parks delayed copies and moves the due ones back, for consumer group ``group``."""

    def __init__(self, redis: Redis, group: str) -> None:
        self.stream = retry_destination(group)
        self.parked = f"{self.stream}.parked"
        self.due = f"{self.stream}.due"
        self._park = redis.register_script(_PARK)
        self._move = redis.register_script(_MOVE)

    async def park(
        self, delay: float, payload: bytes, key: bytes | None, headers: Mapping[str, str]
    ) -> None:
        """Store one copy, to be moved to the retry stream in ``delay`` seconds."""
        args: list[Any] = [max(0, int(delay * 1000))]
        for name, value in encode_fields(payload, key, headers).items():
            args.extend((name, value))
        await self._park(keys=[self.parked, self.due], args=args)

    async def move_due(self) -> float | None:
        """Move the copies that are due; seconds until the next one (``None``: none left)."""
        while True:
            moved, wait_ms = await self._move(
                keys=[self.due, self.parked, self.stream], args=[_MOVE_BATCH]
            )
            if int(moved) < _MOVE_BATCH:
                break
        wait = int(wait_ms)
        return None if wait < 0 else wait / 1000
