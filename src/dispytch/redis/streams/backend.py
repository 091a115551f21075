"""RedisStreamsBackend: ``redis+streams://`` URLs for :class:`~dispytch.app.App`."""

from __future__ import annotations

import uuid
from typing import Any

from redis.asyncio import Redis

from dispytch.listener.consumer import Consumer
from dispytch.redis.client import RedisBackendBase, RedisUnavailableError, client_url
from dispytch.redis.streams.consumer import RedisStreamsConsumer
from dispytch.redis.streams.producer import RedisStreamsProducer
from dispytch.redis.streams.replies import RedisStreamsInbox
from dispytch.request import ReplyInbox
from dispytch.topic_rules import REDIS_STREAMS

__all__ = ["RedisStreamsBackend", "RedisStreamsUnavailableError", "client_url"]


class RedisStreamsUnavailableError(RedisUnavailableError):
    """Redis did not answer when the backend connected."""


class RedisStreamsBackend(RedisBackendBase[RedisStreamsProducer]):
    """Redis Streams from ``redis+streams://[:password@]host:port/db`` (``rediss+streams://``
    for TLS). **At least once**, unlike ``redis://`` (Pub/Sub).

    Each topic is a stream (its key is the topic); a listener ``group`` is a consumer group, so
    processes in one group share the work and each group gets every event. An emit returns once
    Redis stored the entry (``XADD`` replied). See :class:`RedisStreamsConsumer` for acks,
    redelivery of a dead process's entries (``claim_idle_ms``) and pattern topics
    (``discovery_interval``), and :mod:`dispytch.redis.fields` for the entry layout.

    With Sentinel (``redis+streams://sentinel1:26379,sentinel2:26379/0?sentinel=mymaster``, see
    :mod:`dispytch.redis.sentinel`) clients follow the master through failovers, and an emit
    returns only once one replica has the entry too (``wait_replicas``).

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
        wait_replicas: replicas that must have each emitted entry before the emit returns
            (``WAIT``); default 1 with Sentinel, 0 without. See :class:`RedisStreamsProducer`.
        wait_timeout: seconds to wait for them before the emit raises.
        sentinel_options: options of the connections to the Sentinels (password, TLS).
    """

    unavailable_error = RedisStreamsUnavailableError
    topic_rules = REDIS_STREAMS

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
        wait_replicas: int | None = None,
        wait_timeout: float = 1.0,
        **options: Any,
    ) -> None:
        super().__init__(url, publish_timeout=publish_timeout, **options)
        self.maxlen = maxlen
        if wait_replicas is None:
            wait_replicas = 0 if self.sentinel is None else 1
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.dead_letter_maxlen = dead_letter_maxlen
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

    def _build(self, **overrides: Any) -> Redis:
        # Entries are read as bytes, whatever the options say.
        return super()._build(**overrides, decode_responses=False)

    def _new_producer(self) -> RedisStreamsProducer:
        return RedisStreamsProducer(
            self.client,
            maxlen=self.maxlen,
            timeout=self.publish_timeout,
            wait_replicas=self.wait_replicas,
            wait_timeout=self.wait_timeout,
        )

    def make_consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> Consumer:
        """A new consumer of consumer group ``group`` holding at most ``prefetch`` entries and
        about ``max_buffer_bytes`` payload bytes (64 MiB when ``None``)."""
        overrides: dict[str, Any] = {}
        if "socket_timeout" not in self.options:
            # A read blocks at most poll_interval on the server; a socket silent for much longer
            # is dead, whatever TCP thinks.
            overrides["socket_timeout"] = self.consumer_options["poll_interval"] + 10.0
        if "health_check_interval" not in self.options:
            overrides["health_check_interval"] = 30
        return RedisStreamsConsumer(
            self._build(**overrides),
            group=group,
            prefetch=prefetch,
            max_buffer_bytes=max_buffer_bytes,
            owns_client=True,
            **self.consumer_options,
        )

    def reply_inbox(self, group: str) -> ReplyInbox:
        """A stream ``dispytch:reply:<random>`` read by this app alone (see
        :class:`~dispytch.redis.streams.replies.RedisStreamsInbox`)."""
        poll = self.consumer_options["poll_interval"]
        overrides: dict[str, Any] = {}
        if "socket_timeout" not in self.options:
            overrides["socket_timeout"] = poll + 10.0
        address = self.producer().reply_prefix + uuid.uuid4().hex
        return RedisStreamsInbox(self._build(**overrides), self.client, address, poll)
