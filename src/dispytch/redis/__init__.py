"""Redis backend, two modes: Pub/Sub here (``redis://``), Streams in :mod:`dispytch.redis.streams`
(``redis+streams://``). Both share this package's client, pipelining, topic and dead-letter
modules.

Pub/Sub is AT MOST ONCE: read this before relying on it.

Redis Pub/Sub forwards a published message to the subscribers connected at that moment and
keeps nothing. So with this backend:

* an event published while no subscriber is connected (or while one is reconnecting) is lost;
* there is no acknowledgement: ``ack`` and ``nack`` are no-ops, a message a process was
  handling when it stopped is lost, and a failed message is never redelivered;
* every subscribed process receives every event; a listener ``group`` does not share work;
* Redis disconnects a subscriber that falls too far behind (``client-output-buffer-limit
  pubsub``) and drops what it had queued for it;
* messages carry no headers and no key (emit's ``headers``/``key`` are ignored).

What it does guarantee: an emit returns only after Redis replied to ``PUBLISH`` (and raises
otherwise); a subscriber reconnects and resubscribes by itself after a connection loss; dead
letters are durable, stored in the Redis Stream ``{topic}.dlq``
(:meth:`RedisBackend.dead_letters` reads them back).

For at-least-once delivery on Redis, use Redis Streams (``redis+streams://``).

Seed style::

    from dispytch.redis import RedisConsumer, RedisProducer

    redis = Redis.from_url("redis://localhost:6379/0")
    pubsub = redis.pubsub()
    await pubsub.subscribe("user_events")
    listener = EventListener(RedisConsumer(pubsub))
    emitter = EventEmitter(RedisProducer(redis))

App style: ``App("redis://[:password@]host:6379/0", **options)``; options go to
:class:`RedisBackend` and from there to ``redis.asyncio.Redis.from_url``.
"""

from dispytch.errors import MissingExtraError

try:
    import redis.asyncio  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise MissingExtraError("redis", "redis") from exc

from dispytch.dead_letter import DeadLetter
from dispytch.redis.backend import RedisBackend, RedisUnavailableError
from dispytch.redis.consumer import RedisConsumer
from dispytch.redis.dedup import RedisDedup
from dispytch.redis.producer import RedisProducer

__all__ = [
    "DeadLetter",
    "RedisBackend",
    "RedisConsumer",
    "RedisDedup",
    "RedisProducer",
    "RedisUnavailableError",
]
