"""RedisDedup: the successes of every process of a group, in Redis, each key with a TTL."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from redis.asyncio import Redis

from dispytch.dedup import DedupStore
from dispytch.errors import ConfigurationError
from dispytch.redis.backend import RedisBackend

__all__ = ["RedisDedup"]

#: One day: how long a success is remembered unless ``ttl`` says otherwise.
DEFAULT_TTL = 86_400.0


class RedisDedup(DedupStore):
    """Remembers successes in Redis, shared by every process (and restart) of an app.

    ``RedisDedup("redis://[:password@]host:6379/0", ttl=86400)`` (``rediss://`` for TLS; the
    same URL forms, TLS and connection options as the ``redis://`` backend). Each success is one
    key ``<prefix><group>:<handler>:<event id>`` that expires after ``ttl`` seconds: make it
    longer than the longest time a redelivery or a replay can come after the first delivery
    (the broker's retention, how long dead letters wait for a replay). A lookup is ``EXISTS``,
    a record is ``SET ... EX ttl``: one round trip each.

    Pass ``client=`` to use a ``redis.asyncio.Redis`` you own instead (it is not closed).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        ttl: float = DEFAULT_TTL,
        prefix: str = "dispytch:dedup:",
        client: Redis | None = None,
        **options: Any,
    ) -> None:
        if (
            not isinstance(ttl, int | float)
            or isinstance(ttl, bool)
            or not math.isfinite(ttl)
            or ttl < 1
        ):
            raise ConfigurationError(f"ttl must be a number of seconds >= 1, got {ttl!r}")
        # The backend builds the client: URL forms, TLS, secrets kept out of logs, connect errors.
        self._backend = RedisBackend(url, **options)
        self.ttl_ms = int(ttl * 1000)
        self.prefix = prefix
        self._given = client
        self._checked = False
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"RedisDedup({self._backend.security.safe_url!r}, ttl={self.ttl_ms / 1000:g}, "
            f"prefix={self.prefix!r})"
        )

    async def _client(self) -> Redis:
        if self._given is not None:
            return self._given
        if not self._checked:
            async with self._lock:
                if not self._checked:
                    await self._backend.connect()  # a wrong URL or password fails loudly, once
                    self._checked = True
        return self._backend.client

    async def seen(self, key: str) -> bool:
        client = await self._client()
        return bool(await client.exists(self.prefix + key))

    async def record(self, key: str) -> None:
        client = await self._client()
        await client.set(self.prefix + key, b"1", px=self.ttl_ms)

    async def close(self) -> None:
        self._checked = False
        await self._backend.close()
