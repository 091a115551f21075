"""RedisBackend: ``redis://`` URLs for :class:`~dispytch.app.App` (Redis Pub/Sub)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from dispytch.backend import Backend, redact_url
from dispytch.dead_letter import DeadLetter
from dispytch.errors import ConfigurationError
from dispytch.listener.consumer import Consumer
from dispytch.redis.consumer import RedisConsumer
from dispytch.redis.dead_letters import DEFAULT_DEAD_LETTER_MAXLEN, read_dead_letters
from dispytch.redis.producer import RedisProducer

__all__ = ["RedisBackend", "RedisUnavailableError"]


class RedisUnavailableError(ConfigurationError, ConnectionError):
    """Redis did not answer when the backend connected."""


class RedisBackend(Backend):
    """Redis Pub/Sub from ``redis://[:password@]host:port/db`` (or ``rediss://`` for TLS).

    **At most once**: Pub/Sub keeps nothing. An event published while no subscriber is
    connected, while a subscriber is reconnecting, or held by a process that stops, is lost;
    every subscribed process receives every event (``group`` does not share work). Dead letters
    are durable: they go to the Redis Stream ``{topic}.dlq``. For at-least-once delivery use
    ``redis+streams://``.

    Topics are channels; patterns such as ``user:{user_id}:events`` become ``PSUBSCRIBE
    user:*:events``. Options not named here go to ``redis.asyncio.Redis.from_url``
    (``socket_timeout``, ``ssl_ca_certs``, ``health_check_interval``...).

    Args:
        url: the Redis URL.
        dead_letter_maxlen: approximate cap of each ``{topic}.dlq`` stream (``None``: no cap).
        publish_timeout: seconds an emit waits for Redis' reply before
            :class:`~dispytch.emitter.producer.ProducerTimeout`.
        buffer_size: messages a consumer reads ahead of its handlers at most.
        poll_interval: seconds a consumer's read waits before it checks whether it is closing.
        reconnect_max_delay: cap of a consumer's wait between reconnection attempts.
    """

    topic_delimiter = ":"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        dead_letter_maxlen: int | None = DEFAULT_DEAD_LETTER_MAXLEN,
        publish_timeout: float | None = 10.0,
        buffer_size: int = 10_000,
        poll_interval: float = 1.0,
        reconnect_max_delay: float = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(url, **options)
        self.dead_letter_maxlen = dead_letter_maxlen
        self.publish_timeout = publish_timeout
        self.buffer_size = buffer_size
        self.poll_interval = poll_interval
        self.reconnect_max_delay = reconnect_max_delay
        self._client: Redis | None = None
        self._producer: RedisProducer | None = None
        self._consumers: list[RedisConsumer] = []

    def _build(self, **overrides: Any) -> Redis:
        try:
            return Redis.from_url(self.url, **{**self.options, **overrides})
        except (ValueError, TypeError) as exc:
            # redis-py's messages may quote the URL; say it again without the password.
            raise ConfigurationError(
                f"cannot build a Redis client from {redact_url(self.url)!r}: "
                f"{type(exc).__name__}; use redis://[:password@]host:port/db and options that "
                "redis.asyncio.Redis.from_url accepts"
            ) from None

    @property
    def client(self) -> Redis:
        """The client used for publishing and dead letters (built on first use)."""
        if self._client is None:
            self._client = self._build()
        return self._client

    async def connect(self) -> None:
        """Check that Redis answers, so a wrong URL fails at start, not at the first emit."""
        try:
            await self.client.ping()
        except RedisError as exc:
            raise RedisUnavailableError(
                f"Redis at {redact_url(self.url)} did not answer ({type(exc).__name__}: {exc}); "
                "check the URL and that Redis is running"
            ) from None

    def producer(self) -> RedisProducer:
        if self._producer is None:
            self._producer = RedisProducer(self.client, timeout=self.publish_timeout)
        return self._producer

    def consumer(self, group: str, *, prefetch: int) -> Consumer:
        """A new Pub/Sub subscriber. ``group`` and ``prefetch`` do not apply to Pub/Sub: every
        subscriber receives every message, and the consumer reads ahead up to ``buffer_size``.
        """
        # Its own client: payloads are bytes whatever decode_responses says, and a health check
        # notices a dead connection on an idle subscription.
        overrides: dict[str, Any] = {"decode_responses": False}
        if "health_check_interval" not in self.options:
            overrides["health_check_interval"] = 30
        subscriber = self._build(**overrides)
        consumer = RedisConsumer(
            subscriber.pubsub(ignore_subscribe_messages=True),
            redis=self.client,
            dead_letter_maxlen=self.dead_letter_maxlen,
            buffer_size=self.buffer_size,
            poll_interval=self.poll_interval,
            reconnect_max_delay=self.reconnect_max_delay,
            owns_pubsub=True,
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
