"""Every use of redis-py's internals, in one place.

Verified with **redis-py 8.2.0** (and 5.x to 8.1 for the TLS connection). Every read of
redis-py's internal state goes through :func:`private`; the fallback tests
(``tests/backends/test_compat_fallbacks.py``, ``pytest --compat-fallbacks``) replace it with one
that finds nothing, which runs every fallback below against the live server. CI also runs the
Redis tests against the newest redis-py (``.ci/run``, "newest clients").

* :func:`reply_reader`: the Pub/Sub reader drains the replies already received on its
  connection with the connection's ``can_read`` (``can_read_destructive`` before redis-py 8)
  and ``read_response(timeout=..., disconnect_on_error=False, push_request=True)``, the calls
  ``PubSub.parse_response`` makes, without its per-call timeout and health-check wrapping.
  Fallback: ``None``; the reader takes each reply through the public ``parse_response``.
* :func:`held_pool` / :func:`idle_bytes`: the producers hold one connection of the client's
  pool and check it before each write with that same ``can_read`` (bytes or the end of the
  stream arrived while it was idle: reconnect), as the pool checks a connection it lends.
  Fallback: ``None`` (no check); the producers send through the client's commands and
  pipelines, which take a checked connection from the pool every time.
* :class:`ContextTLSConnection`: a TLS connection that uses the backend's
  ``ssl.SSLContext``, by overriding ``SSLConnection._connection_arguments``. Fallback: none
  that keeps the context, so :func:`tls_context_supported` is false and the backend refuses
  such a TLS setting with an error instead of connecting without it.
* :class:`FollowingConnection`: a Sentinel-managed connection that asks the Sentinels for the
  master on every (re)connect, by overriding ``Connection._connect``. Fallback
  (:func:`sentinel_following_supported` false): a warning; connections go back to the address
  they had after a reconnect (redis-py's own behaviour), only new ones follow a failover.
"""

from __future__ import annotations

import functools
import logging
import math
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import ConnectionPool, SSLConnection
from redis.asyncio.sentinel import (
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

__all__ = [
    "ContextTLSConnection",
    "FollowingConnection",
    "FollowingSSLConnection",
    "held_pool",
    "idle_bytes",
    "private",
    "reply_reader",
    "sentinel_following_supported",
    "tls_context_supported",
]

logger = logging.getLogger("dispytch.redis")

#: The redis-py versions the access below was checked against.
VERIFIED_VERSIONS = ("8.2.0",)

ReplyReader = tuple[Callable[[], Awaitable[bool]], Callable[[], Awaitable[Any]]]


def private(obj: Any, name: str) -> Any:
    """``obj``'s internal attribute ``name``, ``None`` when it has none.

    Every read of redis-py's internals in this module goes through here; the fallback tests
    replace it with one that finds nothing, which runs every fallback.
    """
    return getattr(obj, name, None)


def reply_reader(connection: Any) -> ReplyReader | None:
    """``(has_reply, read_reply)`` for a Pub/Sub connection: whether a reply was already
    received (bytes of it are buffered, so reading it does not block), and read it. ``None``
    when the connection lacks them (read each reply through ``PubSub.parse_response``)."""
    # redis-py 8 renamed the check for buffered reply bytes (the old name now warns).
    has_reply = private(connection, "can_read") or private(connection, "can_read_destructive")
    read = private(connection, "read_response")
    if not callable(has_reply) or not callable(read):
        return None
    return has_reply, functools.partial(
        read, timeout=math.inf, disconnect_on_error=False, push_request=True
    )


def _idle_check(connection: Any) -> Any:
    # redis-py 8 renamed the check for buffered reply bytes (the old name now warns).
    return private(connection, "can_read") or private(connection, "can_read_destructive")


def held_pool(redis: Any) -> ConnectionPool | None:
    """The pool of ``redis`` a producer may borrow one connection from for its lifetime:
    ``None`` for a single-connection client, another kind of client, connections without the
    idle check (the fallback), and a Sentinel pool whose connections would not follow a new
    master when they reconnect."""
    if not isinstance(redis, Redis) or getattr(redis, "single_connection_client", True):
        return None
    pool = getattr(redis, "connection_pool", None)
    if not isinstance(pool, ConnectionPool) or not callable(_idle_check(pool.connection_class)):
        return None
    if isinstance(pool, SentinelConnectionPool) and not sentinel_following_supported():
        return None
    return pool


async def idle_bytes(connection: Any) -> bool:
    """Whether bytes (or the end of the stream) arrived on an idle ``connection`` of a
    :func:`held_pool` (so it is reconnected before the next command)."""
    check = _idle_check(connection)
    return bool(await check()) if callable(check) else False


# -- TLS with the backend's context ------------------------------------------------------------


def tls_context_supported() -> bool:
    """Whether :class:`ContextTLSConnection` can hand its context to the socket."""
    return callable(private(SSLConnection, "_connection_arguments"))


class ContextTLSConnection(SSLConnection):
    """A redis-py TLS connection that uses the ``ssl.SSLContext`` it is given (the backend's,
    built from Dispytch's TLS options or passed as ``ssl_context``): redis-py's asyncio
    connections build their own from ``ssl_*`` file options only.

    redis-py 5.x to 8.2's ``SSLConnection._connection_arguments`` hands the context to
    ``asyncio.open_connection`` (a test checks the context really is used).
    """

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tls_context = tls_context

    def _connection_arguments(self) -> Mapping[str, Any]:
        arguments = dict(super()._connection_arguments())
        arguments["ssl"] = self.tls_context
        return arguments


# -- following the Sentinel master -------------------------------------------------------------

_warned_sentinel = False


def sentinel_following_supported() -> bool:
    """Whether :class:`FollowingConnection` sees every (re)connect (warns once if not)."""
    global _warned_sentinel
    supported = callable(private(SentinelManagedConnection, "_connect"))
    if not supported and not _warned_sentinel:
        _warned_sentinel = True
        logger.warning(
            "this redis-py's connections have no _connect (verified with redis-py 8.2): a "
            "connection that reconnects after a Sentinel failover goes back to the old "
            "master's address; new connections find the new master"
        )
    return supported


class _FollowMaster:
    """Asks the Sentinels for the master on every (re)connect of a connection.

    redis-py (checked with 8.2) asks them only when a connection is taken from the pool; a
    connection a client holds (``single_connection_client``, Pub/Sub), reconnected after an
    error, goes back to the address it had: the old master, dead or demoted, forever. Looking
    the address up where the socket is opened covers both paths.
    """

    connection_pool: Any
    host: str
    port: int

    async def _connect(self) -> None:
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super()._connect()  # type: ignore[misc]


class FollowingConnection(_FollowMaster, SentinelManagedConnection):
    """A Sentinel-managed connection that follows the master when it reconnects."""


class FollowingSSLConnection(_FollowMaster, SentinelManagedSSLConnection):
    """:class:`FollowingConnection` over TLS."""
