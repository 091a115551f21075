"""RedisProducer: PUBLISH, with Redis' reply as the confirm."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dispytch.emitter.producer import Producer, ProducerTimeout
from dispytch.errors import EmitError

__all__ = ["RedisProducer"]

logger = logging.getLogger("dispytch.redis")

_Pending = tuple[str, bytes, "asyncio.Future[int]"]


class RedisProducer(Producer):
    """Publishes events to Redis Pub/Sub channels (the channel is the event's topic).

    ``send`` returns once Redis replied to ``PUBLISH``, and raises otherwise: :class:`EmitError`
    when Redis refused the command or the connection failed, :class:`ProducerTimeout` when no
    reply came within ``timeout`` seconds (the event may or may not have been published).

    What the reply means: Redis accepted the message and handed it to the subscribers connected
    *at that moment*. Pub/Sub stores nothing; a reply of 0 receivers means nobody heard the event
    and it is gone. That is normal for Pub/Sub, so it is logged at debug level only. Use Redis
    Streams (``redis+streams://``) when events must survive a subscriber being away.

    Pub/Sub messages carry no headers and no key: the ``headers`` and ``key`` arguments are
    accepted (so the same emitter code runs on every backend) and ignored.

    Sends made concurrently (``emit_many``, many tasks) are written in call order as one
    pipelined round trip, so their order on a channel is the call order.

    Args:
        redis: a ``redis.asyncio.Redis`` client; the producer does not close it.
        timeout: seconds to wait for Redis' reply to a batch; ``None`` waits as long as the
            client's own ``socket_timeout`` allows.
        max_batch: most ``PUBLISH`` commands written in one round trip.
    """

    def __init__(self, redis: Redis, *, timeout: float | None = 10.0, max_batch: int = 1024):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.redis = redis
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
        """PUBLISH ``payload`` on channel ``topic``; return once Redis replied."""
        if self._closed:
            raise EmitError("this RedisProducer is closed; emit through a started app/producer")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((topic, payload, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="dispytch-redis-publish")
        receivers = await future
        if receivers == 0:
            logger.debug("published to %r; no subscriber was listening, the event is gone", topic)

    async def _flush(self) -> None:
        # One flusher at a time: batches go out one after the other, so call order is kept.
        try:
            while self._pending:
                count = min(len(self._pending), self.max_batch)
                batch = [self._pending.popleft() for _ in range(count)]
                await self._publish(batch)
        finally:
            self._flusher = None
            while self._pending:  # only when cancelled: nobody will send these any more
                _fail(self._pending.popleft()[2], EmitError("the producer stopped before sending"))

    async def _publish(self, batch: list[_Pending]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for topic, payload, _ in batch:
            pipe.publish(topic, payload)
        try:
            async with asyncio.timeout(self.timeout):
                results = await pipe.execute(raise_on_error=False)
        except (TimeoutError, RedisTimeoutError) as exc:
            error: EmitError = ProducerTimeout(
                f"Redis did not confirm {len(batch)} PUBLISH command(s) within "
                f"{self.timeout}s ({exc or type(exc).__name__}); they may or may not have been "
                "published. Check that Redis is reachable, or raise the producer's timeout."
            )
        except (RedisError, OSError) as exc:
            error = EmitError(
                f"could not PUBLISH to Redis ({type(exc).__name__}: {exc}); check that Redis is "
                "running and reachable"
            )
        except BaseException:
            for _, _, future in batch:
                _fail(future, EmitError("the producer was cancelled while publishing"))
            raise
        else:
            for (topic, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # the caller gave up (cancelled)
                if isinstance(result, BaseException):
                    future.set_exception(EmitError(f"Redis refused PUBLISH to {topic!r}: {result}"))
                else:
                    future.set_result(int(result))
            return
        for _, _, future in batch:
            _fail(future, error)

    async def close(self) -> None:
        """Wait for sends in progress, then refuse new ones. The Redis client stays open."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None:
            await asyncio.gather(flusher, return_exceptions=True)


def _fail(future: asyncio.Future[int], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
