"""RedisStreamsProducer: XADD, with the entry id Redis replies as the confirm."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dispytch.emitter.producer import Producer, ProducerTimeout
from dispytch.errors import ConfigurationError, EmitError
from dispytch.redis_streams.fields import encode_fields

__all__ = ["RedisStreamsProducer"]

_Pending = tuple[str, dict[Any, Any], "asyncio.Future[Any]"]


class RedisStreamsProducer(Producer):
    """Appends events to Redis Streams (the stream's key is the event's topic).

    ``send`` returns once Redis replied to ``XADD`` with the new entry's id: the entry is stored
    (as durable as the server's persistence settings: ``appendonly``/``appendfsync``). It raises
    :class:`EmitError` when Redis refused the command or the connection failed, and
    :class:`ProducerTimeout` when no reply came within ``timeout`` seconds (the entry may or may
    not have been stored).

    The entry holds ``payload``, the ordering ``key`` when given, and one ``h:<name>`` field per
    header (see :mod:`dispytch.redis_streams.fields`).

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
    """

    def __init__(
        self,
        redis: Redis,
        *,
        maxlen: int | None = None,
        timeout: float | None = 10.0,
        max_batch: int = 1024,
    ) -> None:
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be >= 1, got {max_batch}")
        if maxlen is not None and maxlen < 1:
            raise ConfigurationError(f"maxlen must be >= 1 or None (no trimming), got {maxlen}")
        self.redis = redis
        self.maxlen = maxlen
        self.timeout = timeout
        self.max_batch = max_batch
        self._pending: deque[_Pending] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

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
        if self._closed:
            raise EmitError(
                "this RedisStreamsProducer is closed; emit through a started app/producer"
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((topic, encode_fields(payload, key, headers), future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="dispytch-redis-streams-xadd")
        await future

    async def _flush(self) -> None:
        # One flusher at a time: batches go out one after the other, so call order is kept.
        try:
            while self._pending:
                count = min(len(self._pending), self.max_batch)
                batch = [self._pending.popleft() for _ in range(count)]
                await self._add(batch)
        finally:
            self._flusher = None
            while self._pending:  # only when cancelled: nobody will send these any more
                _fail(self._pending.popleft()[2], EmitError("the producer stopped before sending"))

    async def _add(self, batch: list[_Pending]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        maxlen = self.maxlen
        for topic, fields, _ in batch:
            pipe.xadd(topic, fields, maxlen=maxlen, approximate=True)
        try:
            async with asyncio.timeout(self.timeout):
                results = await pipe.execute(raise_on_error=False)
        except (TimeoutError, RedisTimeoutError) as exc:
            error: EmitError = ProducerTimeout(
                f"Redis did not confirm {len(batch)} XADD command(s) within {self.timeout}s "
                f"({exc or type(exc).__name__}); they may or may not have been stored. Check "
                "that Redis is reachable, or raise the producer's timeout."
            )
        except (RedisError, OSError) as exc:
            error = EmitError(
                f"could not XADD to Redis ({type(exc).__name__}: {exc}); check that Redis is "
                "running and reachable"
            )
        except BaseException:
            for _, _, future in batch:
                _fail(future, EmitError("the producer was cancelled while sending"))
            raise
        else:
            for (topic, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # the caller gave up (cancelled)
                if isinstance(result, BaseException):
                    future.set_exception(
                        EmitError(
                            f"Redis refused XADD to {topic!r}: {result}; is the key a stream "
                            "(check its TYPE) and is Redis out of memory?"
                        )
                    )
                else:
                    future.set_result(result)
            return
        for _, _, future in batch:
            _fail(future, error)

    async def close(self) -> None:
        """Wait for sends in progress, then refuse new ones. The Redis client stays open."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None:
            await asyncio.gather(flusher, return_exceptions=True)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
