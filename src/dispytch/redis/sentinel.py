"""Redis behind Sentinel: the URL names the Sentinels and the master's name.

``redis+streams://[:password@]sentinel1:26379,sentinel2:26379,sentinel3:26379/0?sentinel=mymaster``
(``redis://`` for Pub/Sub, ``rediss`` for TLS) asks the Sentinels where master ``mymaster`` is
and connects there; after a failover, every new connection goes to the new master
(redis-py's ``SentinelConnectionPool``), so consumers that lost their connection resume on the
promoted replica by themselves. The password (and user) in the URL are the master's; options
for the Sentinel connections themselves go in ``sentinel_options`` (e.g. their password).

Replication to the replica is asynchronous: an entry Redis confirmed can be lost if the master
dies before the replica has it. :class:`~dispytch.redis.streams.RedisStreamsBackend` therefore
waits, with Sentinel, for one replica to confirm each batch of emits (``WAIT 1``) before an emit
returns (``wait_replicas``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from dispytch.errors import ConfigurationError
from dispytch.hosts import parse_hosts
from dispytch.redis._compat import (
    FollowingConnection,
    FollowingSSLConnection,
    sentinel_following_supported,
)

__all__ = ["FollowingConnection", "SentinelTarget", "sentinel_target"]

DEFAULT_SENTINEL_PORT = 26379


class SentinelTarget:
    """Builds clients of the master that a set of Sentinels watch."""

    def __init__(
        self,
        sentinels: list[tuple[str, int]],
        master: str,
        connection: dict[str, Any],
        sentinel_options: dict[str, Any] | None = None,
    ) -> None:
        self.master = master
        self.connection = connection  # db, username, password, ssl: for the master
        sentinel_following_supported()  # warns when reconnects cannot follow a failover
        self._sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_options)

    def client(self, **options: Any) -> Redis:
        """A new client of the current master (each of its connections asks the Sentinels)."""
        settings = {**self.connection, **options}
        settings["connection_class"] = (
            FollowingSSLConnection if settings.get("ssl") else FollowingConnection
        )
        client: Redis = self._sentinel.master_for(self.master, **settings)
        return client

    async def aclose(self) -> None:
        """Close the connections to the Sentinels."""
        for sentinel in self._sentinel.sentinels:
            await sentinel.aclose()


def sentinel_target(
    url: str, shown: str, sentinel_options: dict[str, Any] | None
) -> SentinelTarget | None:
    """A :class:`SentinelTarget` for a URL with ``?sentinel=<master name>``, else ``None``."""
    hosts = parse_hosts(url, DEFAULT_SENTINEL_PORT, shown=shown)
    path, _, query = hosts.rest.partition("?")
    params = dict(parse_qsl(query.partition("#")[0], keep_blank_values=True))
    master = params.pop("sentinel", None)
    if master is None:
        if sentinel_options:
            raise ConfigurationError(
                f"sentinel_options is given but {shown!r} names no Sentinel master; add "
                "?sentinel=<master name> to the URL"
            )
        return None
    if not master:
        raise ConfigurationError(f"{shown!r}: ?sentinel= needs the master's name (?sentinel=main)")
    if params:
        raise ConfigurationError(
            f"{shown!r}: with ?sentinel=, give other settings as options, not in the URL "
            f"({', '.join(sorted(params))})"
        )
    db_text = path.strip("/") or "0"
    if not db_text.isdigit():
        raise ConfigurationError(f"{shown!r}: the path must be the database number, like /0")
    connection: dict[str, Any] = {"db": int(db_text)}
    user, colon, password = hosts.userinfo.partition(":")
    if user:
        connection["username"] = unquote(user)
    if colon:
        connection["password"] = unquote(password)
    if hosts.scheme.lower().startswith("rediss"):
        connection["ssl"] = True
    return SentinelTarget(list(hosts.hosts), master, connection, sentinel_options)
