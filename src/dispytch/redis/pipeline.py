"""PipelinedProducer: sends written in call order, batched into pipelined round trips.

Both modes' producers are one of these: they differ only in the command queued per send
(``PUBLISH`` or ``XADD``) and in what Redis' reply means.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dispytch.emitter.producer import Outgoing, Producer, ProducerTimeout
from dispytch.errors import ConfigurationError, EmitError

__all__ = ["PipelinedProducer"]

ItemT = TypeVar("ItemT")


class PipelinedProducer(Producer, Generic[ItemT]):
    """Queues sends and writes them, in call order, as pipelined batches of one command each.

    One background task writes one batch (at most ``max_batch`` commands) at a time, so
    concurrent sends (``emit_many``, many tasks) reach Redis in call order. Each send gets the
    reply to its own command; it raises :class:`ProducerTimeout` when no reply came within
    ``timeout`` seconds, and :class:`EmitError` when Redis refused it or the connection failed.

    A subclass names its ``command``, builds an item with :meth:`_item` and writes it with
    :meth:`_queue`.
    """

    #: The Redis command of one send, for messages (``"PUBLISH"``).
    command: ClassVar[str]
    #: What a confirmed send is, for the timeout message (``"published"``).
    outcome: ClassVar[str]
    #: Appended to the message of a refused command: what to check.
    refusal_hint: ClassVar[str] = ""

    def __init__(self, redis: Redis, *, timeout: float | None = 10.0, max_batch: int = 1024):
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be >= 1, got {max_batch}")
        self.redis = redis
        self.timeout = timeout
        self.max_batch = max_batch
        self._pending: deque[tuple[str, ItemT, asyncio.Future[Any]]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    def _queue(self, pipe: Pipeline, topic: str, item: ItemT) -> None:
        """Add the command that sends ``item`` to ``topic`` to ``pipe``."""
        raise NotImplementedError

    def _item(self, message: Outgoing) -> ItemT:
        """What :meth:`_queue` sends for ``message`` (as ``send`` builds it)."""
        raise NotImplementedError

    def _confirm(self, pipe: Pipeline) -> bool:
        """Add a command after a batch that confirms it further (``WAIT``); ``True`` if added."""
        return False

    def _confirmed(self, reply: Any, count: int) -> EmitError | None:
        """What the reply to :meth:`_confirm`'s command means for the ``count`` sends of the
        batch Redis accepted: ``None`` if they are confirmed, else the error they raise."""
        return None

    async def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Queue every message for the next batches, then wait for each one's reply.

        Same outcome per message as ``send``, without a coroutine and task per message.
        """
        futures: list[asyncio.Future[Any]] = []
        loop = asyncio.get_running_loop()
        for message in messages:
            try:
                futures.append(self._enqueue(message.topic, self._item(message)))
            except Exception as exc:  # closed, or a message this backend cannot carry
                failed = loop.create_future()
                failed.set_exception(exc)
                futures.append(failed)
        results = await asyncio.gather(*futures, return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]

    async def _submit(self, topic: str, item: ItemT) -> Any:
        """Send ``item`` with the next batch; return Redis' reply to its command."""
        return await self._enqueue(topic, item)

    def _enqueue(self, topic: str, item: ItemT) -> asyncio.Future[Any]:
        """Queue ``item`` for the next batch; the future gets Redis' reply to its command."""
        if self._closed:
            raise EmitError(
                f"this {type(self).__name__} is closed; emit through a started app/producer"
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((topic, item, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(
                self._flush(), name=f"dispytch-redis-{self.command.lower()}"
            )
        return future

    async def _flush(self) -> None:
        # One flusher at a time: batches go out one after the other, so call order is kept.
        try:
            while self._pending:
                count = min(len(self._pending), self.max_batch)
                await self._write([self._pending.popleft() for _ in range(count)])
        finally:
            self._flusher = None
            while self._pending:  # only when cancelled: nobody will send these any more
                _fail(self._pending.popleft()[2], EmitError("the producer stopped before sending"))

    async def _write(self, batch: list[tuple[str, ItemT, asyncio.Future[Any]]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for topic, item, _ in batch:
            self._queue(pipe, topic, item)
        confirming = self._confirm(pipe)
        try:
            async with asyncio.timeout(self.timeout):
                results = await pipe.execute(raise_on_error=False)
        except (TimeoutError, RedisTimeoutError) as exc:
            error: EmitError = ProducerTimeout(
                f"Redis did not confirm {len(batch)} {self.command} command(s) within "
                f"{self.timeout}s ({exc or type(exc).__name__}); they may or may not have been "
                f"{self.outcome}. Check that Redis is reachable, or raise the producer's timeout."
            )
        except (RedisError, OSError) as exc:
            error = EmitError(
                f"could not {self.command} to Redis ({type(exc).__name__}: {exc}); check that "
                "Redis is running and reachable"
            )
        except BaseException:
            for _, _, future in batch:
                _fail(future, EmitError("the producer was cancelled while sending"))
            raise
        else:
            unconfirmed = None
            if confirming:
                accepted = sum(not isinstance(r, BaseException) for r in results[:-1])
                unconfirmed = self._confirmed(results.pop(), accepted)
            for (topic, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # the caller gave up (cancelled)
                if unconfirmed is not None and not isinstance(result, BaseException):
                    future.set_exception(unconfirmed)
                elif isinstance(result, BaseException):
                    future.set_exception(
                        EmitError(
                            f"Redis refused {self.command} to {topic!r}: {result}"
                            f"{self.refusal_hint}"
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
