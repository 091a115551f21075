"""Redis Streams backend: durable, at-least-once delivery on Redis.

Each topic is a stream whose key is the topic; a listener group is a Redis consumer group, so
the processes of one group share the entries and every group receives every entry. An entry is
acknowledged (``XACK``, batched) only after it was handled or dead-lettered; the entries a dead
process held are claimed by a live consumer after ``claim_idle_ms`` (30 s by default) and
delivered again with a higher ``delivery_attempt``. Dead letters go to the stream ``{topic}.dlq``.

Entry layout (see :mod:`dispytch.redis_streams.fields`): ``payload`` (bytes, required), ``key``
(ordering key, optional), ``h:<name>`` (one per header, optional).

Seed style::

    from dispytch.redis_streams import RedisStreamsConsumer, RedisStreamsProducer

    redis = Redis.from_url("redis://localhost:6379/0")
    listener = EventListener(RedisStreamsConsumer(redis, streams=["user_events"], group="billing"))
    emitter = EventEmitter(RedisStreamsProducer(redis))

App style: ``App("redis+streams://[:password@]host:6379/0", group="billing", **options)``;
options go to :class:`RedisStreamsBackend`.
"""

from dispytch.errors import MissingExtraError

try:
    import redis.asyncio  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise MissingExtraError("redis", "redis") from exc

from dispytch.dead_letter import DeadLetter
from dispytch.redis_streams.backend import RedisStreamsBackend, RedisStreamsUnavailableError
from dispytch.redis_streams.consumer import RedisStreamsConsumer
from dispytch.redis_streams.producer import RedisStreamsProducer

__all__ = [
    "DeadLetter",
    "RedisStreamsBackend",
    "RedisStreamsConsumer",
    "RedisStreamsProducer",
    "RedisStreamsUnavailableError",
]
