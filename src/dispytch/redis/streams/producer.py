"""RedisStreamsProducer: XADD, with the entry id Redis replies as the confirm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from dispytch.emitter.producer import Outgoing
from dispytch.errors import ConfigurationError, EmitError
from dispytch.redis.fields import encode_fields
from dispytch.redis.pipeline import PipelinedProducer
from dispytch.topic_rules import REDIS_STREAMS

__all__ = ["REPLY_TTL_MS", "RedisStreamsProducer"]

#: A reply inbox stream expires this long after its last reply (its requester died, say).
REPLY_TTL_MS = 60_000


class RedisStreamsProducer(PipelinedProducer[tuple[Any, ...]]):
    """Appends events to Redis Streams (the stream's key is the event's topic).

    ``send`` returns once Redis replied to ``XADD`` with the new entry's id: the entry is stored
    (as durable as the server's persistence settings: ``appendonly``/``appendfsync``). It raises
    :class:`EmitError` when Redis refused the command or the connection failed, and
    :class:`ProducerTimeout` when no reply came within ``timeout`` seconds (the entry may or may
    not have been stored).

    The entry holds ``payload``, the ordering ``key`` when given, and one ``h:<name>`` field per
    header (see :mod:`dispytch.redis.fields`).

    Sends made concurrently (``emit_many``, many tasks) are written in call order as one
    pipelined round trip, so their order in a stream is the call order.

    Args:
        redis: a ``redis.asyncio.Redis`` client; the producer does not close it.
        maxlen: trim each stream to about this many entries on every XADD (``MAXLEN ~``).
            ``None`` (the default) never trims: durability first, but the stream grows until
            something trims it (acknowledged entries are not removed by Redis).
        timeout: seconds to wait for Redis' reply to a batch; ``None`` waits as long as the
            client's own ``socket_timeout`` allows.
        max_batch: most ``XADD`` commands written in one round trip.
        wait_replicas: after each batch, wait (``WAIT``) until this many replicas have it
            (``0``: do not wait). An emit returns only once they confirmed; if they do not
            within ``wait_timeout`` seconds it raises :class:`EmitError` (the master stored
            the entry, but a failover now could lose it).
        wait_timeout: seconds ``WAIT`` waits for the replicas.
    """

    topic_rules = REDIS_STREAMS
    reply_prefix = "dispytch:reply:"

    command = "XADD"
    outcome = "stored"
    refusal_hint = "; is the key a stream (check its TYPE) and is Redis out of memory?"

    def __init__(
        self,
        redis: Redis,
        *,
        maxlen: int | None = None,
        timeout: float | None = 10.0,
        max_batch: int = 1024,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        if maxlen is not None and maxlen < 1:
            raise ConfigurationError(f"maxlen must be >= 1 or None (no trimming), got {maxlen}")
        if wait_replicas < 0 or wait_timeout <= 0:
            raise ConfigurationError(
                f"wait_replicas must be >= 0 and wait_timeout > 0, got {wait_replicas} and "
                f"{wait_timeout}"
            )
        super().__init__(redis, timeout=timeout, max_batch=max_batch)
        self.maxlen = maxlen
        self.wait_replicas = wait_replicas
        self._wait_ms = max(1, round(wait_timeout * 1000))
        # The XADD arguments before the fields, as redis-py's xadd() writes them.
        self._head: tuple[Any, ...] = (
            ("*",) if maxlen is None else ("MAXLEN", "~", str(maxlen), "*")
        )

    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None:
        """XADD ``payload``, ``key`` and ``headers`` to stream ``topic``; return once stored."""
        await self._submit(topic, _flat(encode_fields(payload, key, headers)))

    async def send_reply(self, address: str, payload: bytes, headers: Mapping[str, str]) -> None:
        """XADD the reply to the requester's inbox stream, then give the stream a TTL, so the
        inbox of a requester that died disappears by itself."""
        await self._submit(address, _flat(encode_fields(payload, None, headers)))
        await self.redis.pexpire(address, REPLY_TTL_MS)

    def _item(self, message: Outgoing) -> tuple[Any, ...]:
        return _flat(encode_fields(message.payload, message.key, message.headers))

    def _args(self, topic: str, item: tuple[Any, ...]) -> tuple[Any, ...]:
        return ("XADD", topic, *self._head, *item)

    def _confirm(self) -> tuple[Any, ...] | None:
        return ("WAIT", self.wait_replicas, self._wait_ms) if self.wait_replicas else None

    def _confirmed(self, reply: Any, count: int) -> EmitError | None:
        if isinstance(reply, int) and reply >= self.wait_replicas:
            return None
        got = f"{reply}" if isinstance(reply, int) else f"no answer ({reply})"
        return EmitError(
            f"Redis stored {count} entries but {got} of the {self.wait_replicas} replica(s) "
            f"asked for confirmed them within {self._wait_ms} ms: a failover now could lose "
            "them, so the emit is not confirmed (it may be delivered anyway). Check the "
            "replicas (INFO replication), or lower wait_replicas"
        )


def _flat(fields: dict[Any, Any]) -> tuple[Any, ...]:
    return tuple(part for pair in fields.items() for part in pair)
