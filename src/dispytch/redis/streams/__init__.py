"""The Streams mode of the Redis backend: durable, at-least-once delivery on Redis.

Each topic is a stream whose key is the topic; a listener group is a Redis consumer group, so
the processes of one group share the entries and every group receives every entry. An entry is
acknowledged (``XACK``, batched) only after it was handled or dead-lettered; the entries a dead
process held are claimed by a live consumer after ``claim_idle_ms`` (30 s by default) and
delivered again with a higher ``delivery_attempt``. Dead letters go to the stream ``{topic}.dlq``.

Entry layout (see :mod:`dispytch.redis.fields`): ``payload`` (bytes, required), ``key``
(ordering key, optional), ``h:<name>`` (one per header, optional).

Seed style::

    from dispytch.redis.streams import RedisStreamsConsumer, RedisStreamsProducer

    redis = Redis.from_url("redis://localhost:6379/0")
    listener = EventListener(RedisStreamsConsumer(redis, streams=["user_events"], group="billing"))
    emitter = EventEmitter(RedisStreamsProducer(redis))

App style: ``App("redis+streams://[:password@]host:6379/0", group="billing", **options)``;
options go to :class:`RedisStreamsBackend`.
"""

# Importing the parent package dispytch.redis already checked that redis-py is installed.
from dispytch.dead_letter import DeadLetter
from dispytch.redis.streams.backend import RedisStreamsBackend, RedisStreamsUnavailableError
from dispytch.redis.streams.consumer import RedisStreamsConsumer
from dispytch.redis.streams.producer import RedisStreamsProducer

__all__ = [
    "DeadLetter",
    "RedisStreamsBackend",
    "RedisStreamsConsumer",
    "RedisStreamsProducer",
    "RedisStreamsUnavailableError",
]
