"""RedisStreamsBackend: ``redis+streams://`` URLs for :class:`~dispytch.app.App`."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from dispytch.backend import Backend, redact_url
from dispytch.dead_letter import DeadLetter
from dispytch.errors import ConfigurationError
from dispytch.listener.consumer import Consumer
from dispytch.redis_streams.consumer import RedisStreamsConsumer
from dispytch.redis_streams.dead_letters import read_dead_letters
from dispytch.redis_streams.producer import RedisStreamsProducer

__all__ = ["RedisStreamsBackend", "RedisStreamsUnavailableError", "client_url"]

_SCHEMES = {"redis+streams": "redis", "rediss+streams": "rediss"}


class RedisStreamsUnavailableError(ConfigurationError, ConnectionError):
    """Redis did not answer when the backend connected."""


def client_url(url: str) -> str:
    """The ``redis://`` URL redis-py understands for a ``redis+streams://`` one."""
    scheme, sep, rest = url.partition("://")
    return f"{_SCHEMES.get(scheme.lower(), scheme)}{sep}{rest}"


class RedisStreamsBackend(Backend):
    """Redis Streams from ``redis+streams://[:password@]host:port/db`` (``rediss+streams://``
    for TLS). **At least once**, unlike ``redis://`` (Pub/Sub).

    Each topic is a stream (its key is the topic); a listener ``group`` is a consumer group, so
    processes in one group share the work and each group gets every event. An emit returns once
    Redis stored the entry (``XADD`` replied). See :class:`RedisStreamsConsumer` for acks,
    redelivery of a dead process's entries (``claim_idle_ms``) and pattern topics
    (``discovery_interval``), and :mod:`dispytch.redis_streams.fields` for the entry layout.

    Redis never removes acknowledged entries by itself: set ``maxlen`` (every ``XADD`` then
    trims the stream to about that many entries, which may drop entries some group has not read
    yet) or trim the streams yourself. Durability across a Redis restart needs the server's
    persistence (``appendonly yes``).

    Options not named here go to ``redis.asyncio.Redis.from_url`` (``socket_timeout``,
    ``ssl_ca_certs``, ``health_check_interval``...).

    Args:
        url: the Redis URL.
        maxlen: approximate cap of every stream written by the producer; ``None`` (default): none.
        dead_letter_maxlen: approximate cap of each ``{topic}.dlq`` stream; ``None``: none.
        publish_timeout: seconds an emit waits for Redis' reply before
            :class:`~dispytch.emitter.producer.ProducerTimeout`.
        claim_idle_ms, poll_interval, discovery_interval, ack_interval, ack_batch, start_id,
            reconnect_max_delay: see :class:`RedisStreamsConsumer`.
    """

    topic_delimiter = ":"

    def __init__(
        self,
        url: str = "redis+streams://127.0.0.1:6379/0",
        *,
        maxlen: int | None = None,
        dead_letter_maxlen: int | None = None,
        publish_timeout: float | None = 10.0,
        claim_idle_ms: int = 30_000,
        poll_interval: float = 1.0,
        discovery_interval: float = 1.0,
        ack_interval: float = 0.005,
        ack_batch: int = 512,
        start_id: str = "0",
        reconnect_max_delay: float = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(url, **options)
        self.maxlen = maxlen
        self.dead_letter_maxlen = dead_letter_maxlen
        self.publish_timeout = publish_timeout
        self.consumer_options: dict[str, Any] = {
            "claim_idle_ms": claim_idle_ms,
            "poll_interval": poll_interval,
            "discovery_interval": discovery_interval,
            "ack_interval": ack_interval,
            "ack_batch": ack_batch,
            "start_id": start_id,
            "reconnect_max_delay": reconnect_max_delay,
            "dead_letter_maxlen": dead_letter_maxlen,
        }
        self._client: Redis | None = None
        self._producer: RedisStreamsProducer | None = None
        self._consumers: list[RedisStreamsConsumer] = []

    def _build(self, **overrides: Any) -> Redis:
        options = {**self.options, **overrides, "decode_responses": False}
        try:
            return Redis.from_url(client_url(self.url), **options)
        except (ValueError, TypeError) as exc:
            # redis-py's messages may quote the URL; say it again without the password.
            raise ConfigurationError(
                f"cannot build a Redis client from {redact_url(self.url)!r}: "
                f"{type(exc).__name__}; use redis+streams://[:password@]host:port/db and options "
                "that redis.asyncio.Redis.from_url accepts"
            ) from None

    @property
    def client(self) -> Redis:
        """The client used for emits and for reading dead letters (built on first use)."""
        if self._client is None:
            self._client = self._build()
        return self._client

    async def connect(self) -> None:
        """Check that Redis answers, so a wrong URL fails at start, not at the first emit."""
        try:
            await self.client.ping()
        except RedisError as exc:
            raise RedisStreamsUnavailableError(
                f"Redis at {redact_url(self.url)} did not answer ({type(exc).__name__}: {exc}); "
                "check the URL and that Redis is running"
            ) from None

    def producer(self) -> RedisStreamsProducer:
        if self._producer is None:
            self._producer = RedisStreamsProducer(
                self.client, maxlen=self.maxlen, timeout=self.publish_timeout
            )
        return self._producer

    def consumer(self, group: str, *, prefetch: int) -> Consumer:
        """A new consumer of consumer group ``group`` holding at most ``prefetch`` entries."""
        overrides: dict[str, Any] = {}
        if "socket_timeout" not in self.options:
            # A read blocks at most poll_interval on the server; a socket silent for much longer
            # is dead, whatever TCP thinks.
            overrides["socket_timeout"] = self.consumer_options["poll_interval"] + 10.0
        if "health_check_interval" not in self.options:
            overrides["health_check_interval"] = 30
        consumer = RedisStreamsConsumer(
            self._build(**overrides),
            group=group,
            prefetch=prefetch,
            owns_client=True,
            **self.consumer_options,
        )
        self._consumers.append(consumer)
        return consumer

    async def close(self) -> None:
        for consumer in self._consumers:
            await consumer.close()
        self._consumers.clear()
        if self._producer is not None:
            await self._producer.close()
            self._producer = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        """Read (without removing) up to ``limit`` dead letters of ``topic`` from ``topic.dlq``."""
        return await read_dead_letters(self.client, topic, limit)
