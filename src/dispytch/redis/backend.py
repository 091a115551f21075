"""RedisBackend: ``redis://`` URLs for :class:`~dispytch.app.App` (Redis Pub/Sub)."""

from __future__ import annotations

import logging
from typing import Any

from dispytch.errors import ConfigurationError
from dispytch.listener.consumer import Consumer
from dispytch.redis.client import RedisBackendBase, RedisUnavailableError
from dispytch.redis.consumer import RedisConsumer
from dispytch.redis.dead_letters import DEFAULT_DEAD_LETTER_MAXLEN
from dispytch.redis.producer import RedisProducer
from dispytch.request import ReplyInbox
from dispytch.untrusted import loggable
from dispytch.workers import worker_slot

__all__ = ["RedisBackend", "RedisUnavailableError"]

logger = logging.getLogger("dispytch.redis")


def warn_unshared_workers(group: str) -> None:
    """Under ``--workers N``, say once (in worker 0) that every worker gets every event."""
    index, workers = worker_slot()
    if workers > 1 and index == 0:
        logger.warning(
            "Redis Pub/Sub does not share work between processes: each of the %d workers of "
            "group %r receives and handles every event (%d times in all); to share the events "
            "of a group between workers, use Redis Streams (redis+streams://)",
            workers,
            loggable(group),
            workers,
        )


class RedisBackend(RedisBackendBase[RedisProducer]):
    """Redis Pub/Sub from ``redis://[:password@]host:port/db`` (or ``rediss://`` for TLS).

    **At most once**: Pub/Sub keeps nothing. An event published while no subscriber is
    connected, while a subscriber is reconnecting, or held by a process that stops, is lost;
    every subscribed process receives every event (``group`` does not share work: under
    ``dispytch run --workers N`` every worker handles every event, which the first worker
    logs as a warning). Dead letters
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
        buffer_size: messages a consumer reads ahead of its handlers at most; with the App's
            ``max_buffer_bytes`` (payload bytes, 64 MiB by default) it bounds the read-ahead,
            and a message arriving while it is full is dropped (counted, ERROR logged).
        poll_interval: seconds a consumer's read waits before it checks whether it is closing.
        reconnect_max_delay: cap of a consumer's wait between reconnection attempts.
    """

    replayable = False  # a replayed event nobody is subscribed to would be lost

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        dead_letter_maxlen: int | None = DEFAULT_DEAD_LETTER_MAXLEN,
        publish_timeout: float | None = 10.0,
        buffer_size: int = 100_000,
        poll_interval: float = 1.0,
        reconnect_max_delay: float = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(url, publish_timeout=publish_timeout, **options)
        self.dead_letter_maxlen = dead_letter_maxlen
        self.buffer_size = buffer_size
        self.poll_interval = poll_interval
        self.reconnect_max_delay = reconnect_max_delay

    def _new_producer(self) -> RedisProducer:
        return RedisProducer(self.client, timeout=self.publish_timeout)

    def make_consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> Consumer:
        """A new Pub/Sub subscriber. ``prefetch`` does not apply to Pub/Sub and ``group`` only
        names the fallback dead-letter stream: every subscriber receives every message, and the
        consumer reads ahead up to ``buffer_size`` messages and ``max_buffer_bytes`` bytes.
        Under ``dispytch run --workers N`` (N > 1), the first worker logs a warning saying so.
        """
        warn_unshared_workers(group)
        # Its own client: payloads are bytes whatever decode_responses says, and a health check
        # notices a dead connection on an idle subscription.
        overrides: dict[str, Any] = {"decode_responses": False}
        if "health_check_interval" not in self.options:
            overrides["health_check_interval"] = 30
        subscriber = self._build(**overrides)
        return RedisConsumer(
            subscriber.pubsub(ignore_subscribe_messages=True),
            redis=self.client,
            group=group,
            dead_letter_maxlen=self.dead_letter_maxlen,
            buffer_size=self.buffer_size,
            max_buffer_bytes=max_buffer_bytes,
            poll_interval=self.poll_interval,
            reconnect_max_delay=self.reconnect_max_delay,
            owns_pubsub=True,
        )

    def reply_inbox(self, group: str) -> ReplyInbox:
        """Refused: a reply published while the requester's subscription is reconnecting is
        lost, and nothing would tell the requester but its timeout."""
        raise ConfigurationError(
            "request/reply needs a reply path that keeps replies; Redis Pub/Sub keeps nothing "
            "(a reply sent while the requester reconnects is lost). Use redis+streams:// for "
            "request/reply on Redis"
        )
