"""PipelinedProducer: sends written in call order, batched into pipelined round trips.

Both modes' producers are one of these: they differ only in the command queued per send
(``PUBLISH`` or ``XADD``) and in what Redis' reply means.

Commands go out on a connection the producer borrows from the client's pool for its lifetime:
packed, written and their replies read with the connection's own methods. Before each write
the connection is checked as the pool checks one it lends (closed by the server while idle:
reconnect), and a failed round trip is retried as the client retries its commands (the
connection's ``retry``). That skips what the client does around every command (pool checkout
and return, metrics, response callbacks): about a third of the CPU of a confirmed send. A
client without a pool to borrow from (a single-connection client, another kind, or a
redis-py whose connections cannot be checked: see :func:`dispytch.redis._compat.held_pool`)
gets its commands and pipelines.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dispytch.emitter.outcomes import Outcomes, wake
from dispytch.emitter.producer import Outgoing, Producer, ProducerTimeout
from dispytch.errors import ConfigurationError, EmitError
from dispytch.redis import _compat
from dispytch.redis.connection import CONNECTION_ERRORS

__all__ = ["PipelinedProducer"]

ItemT = TypeVar("ItemT")


#: A queued command: (topic, item, future of a single send or outcomes of a send_many, index in
#: the batch; -1 for a single send, whose future gets Redis' reply).
_Entry = tuple[str, Any, "asyncio.Future[Any] | Outcomes", int]


class PipelinedProducer(Producer, Generic[ItemT]):
    """Queues sends and writes them, in call order, as pipelined batches of one command each.

    A send with nothing else queued or being written is written at once, as one command. The
    sends that come meanwhile (``emit_many``, many tasks) queue, and one background task
    writes them (at most ``max_batch`` commands per round trip) after it, so they reach Redis
    in call order. Each send gets the reply to its own command; it raises
    :class:`ProducerTimeout` when no reply came within ``timeout`` seconds, and
    :class:`EmitError` when Redis refused it or the connection failed.

    A subclass names its ``command``, builds an item with :meth:`_item` and the command's
    arguments with :meth:`_args`.
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
        self._pending: deque[_Entry] = deque()
        self._flusher: asyncio.Task[None] | None = None
        # A send is writing its own command (no flusher task): what comes meanwhile queues.
        self._busy = False
        self._idle: list[asyncio.Future[None]] = []
        self._closed = False
        # The borrowed connection (see the module docstring); None until the first send, and
        # for a client that has no pool to borrow from.
        self._pool: ConnectionPool | None = _compat.held_pool(redis)
        self._connection: AbstractConnection | None = None

    def _args(self, topic: str, item: ItemT) -> tuple[Any, ...]:
        """The command (name and arguments) that sends ``item`` to ``topic``."""
        raise NotImplementedError

    def _item(self, message: Outgoing) -> ItemT:
        """What :meth:`_args` sends for ``message`` (as ``send`` builds it)."""
        raise NotImplementedError

    def _confirm(self) -> tuple[Any, ...] | None:
        """A command written after each batch (and lone send) that confirms it further
        (``WAIT``), or ``None``."""
        return None

    def _confirmed(self, reply: Any, count: int) -> EmitError | None:
        """What the reply to :meth:`_confirm`'s command means for the ``count`` sends of the
        batch Redis accepted: ``None`` if they are confirmed, else the error they raise."""
        return None

    async def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Queue every message for the next batches, then wait for each one's reply.

        Same outcome per message as ``send``, without a coroutine, task or future per message.
        """
        if self._closed:
            return [self._closed_error() for _ in messages]
        batch = Outcomes(asyncio.get_running_loop().create_future(), len(messages))
        pending = self._pending
        for index, message in enumerate(messages):
            try:
                item = self._item(message)
            except Exception as exc:  # a message this backend cannot carry
                batch.results[index] = exc
                continue
            pending.append((message.topic, item, batch, index))
            batch.expect()
        batch.seal()
        if batch.waiting:
            self._start_flusher()
            await batch.future
        return batch.results

    async def _submit(self, topic: str, item: ItemT) -> Any:
        """Send ``item`` with the next batch; return Redis' reply to its command."""
        if self._closed:
            raise self._closed_error()
        if self._busy or self._flusher is not None:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending.append((topic, item, future, -1))
            return await future
        # Nothing queued or being written: one command, from here (no task, no pipeline).
        self._busy = True
        try:
            return await self._send_one(topic, item)
        finally:
            self._busy = False
            if self._pending:
                self._start_flusher()
            else:
                wake(self._idle)

    async def _send_one(self, topic: str, item: ItemT) -> Any:
        commands = [self._args(topic, item)]
        confirm = self._confirm()
        if confirm is not None:
            commands.append(confirm)
        try:
            async with asyncio.timeout(self.timeout):
                if self._pool is None and confirm is None:
                    client: Any = self.redis
                    return await client.execute_command(*commands[0])
                replies = await self._exchange(commands)
        except (TimeoutError, RedisTimeoutError) as exc:
            raise self._timed_out(1, exc) from exc
        except ResponseError as exc:
            raise self._refused(topic, exc) from exc
        except (RedisError, OSError) as exc:
            raise self._unreachable(exc) from exc
        reply = replies[0]
        if isinstance(reply, BaseException):
            raise self._refused(topic, reply)
        if confirm is not None:
            unconfirmed = self._confirmed(replies[1], 1)
            if unconfirmed is not None:
                raise unconfirmed
        return reply

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Write ``commands`` in one round trip; their replies in order (a refused command's
        error in its place)."""
        pool = self._pool
        if pool is not None:
            return await self._round_trip(pool, commands)
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def _round_trip(self, pool: ConnectionPool, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Write ``commands`` on the borrowed connection and read their replies, in order (a
        refused command's ``ResponseError`` in its place)."""
        connection = self._connection
        if connection is None:
            connection = self._connection = await _borrow(pool)
        elif connection.is_connected:
            await _fresh(connection)
        packed = connection.pack_commands(commands)

        async def exchange() -> list[Any]:
            # A failed write or read disconnects (redis-py does that itself), so no reply is
            # ever left for the next round trip; the next write connects again.
            await connection.send_packed_command(packed)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies

        async def failed(error: Exception) -> None:
            await connection.disconnect()

        replies: list[Any] = await connection.retry.call_with_retry(exchange, failed)
        return replies

    def _start_flusher(self) -> None:
        if self._flusher is None and not self._busy:
            self._flusher = asyncio.create_task(
                self._flush(), name=f"dispytch-redis-{self.command.lower()}"
            )

    async def _flush(self) -> None:
        # One flusher at a time: batches go out one after the other, so call order is kept.
        try:
            while self._pending:
                count = min(len(self._pending), self.max_batch)
                await self._write([self._pending.popleft() for _ in range(count)])
        finally:
            self._flusher = None
            while self._pending:  # only when cancelled: nobody will send these any more
                _settle(self._pending.popleft(), EmitError("the producer stopped before sending"))
            wake(self._idle)

    async def _write(self, batch: list[_Entry]) -> None:
        args = self._args
        commands = [args(topic, item) for topic, item, _, _ in batch]
        confirm = self._confirm()
        if confirm is not None:
            commands.append(confirm)
        try:
            async with asyncio.timeout(self.timeout):
                results = await self._exchange(commands)
        except (TimeoutError, RedisTimeoutError) as exc:
            error: EmitError = self._timed_out(len(batch), exc)
        except (RedisError, OSError) as exc:
            error = self._unreachable(exc)
        except BaseException:
            for entry in batch:
                _settle(entry, EmitError("the producer was cancelled while sending"))
            raise
        else:
            unconfirmed = None
            if confirm is not None:
                reply = results.pop()
                accepted = sum(not isinstance(r, BaseException) for r in results)
                unconfirmed = self._confirmed(reply, accepted)
            for entry, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    _settle(entry, self._refused(entry[0], result))
                elif unconfirmed is not None:
                    _settle(entry, unconfirmed)
                else:
                    _settle(entry, None, result)
            return
        for entry in batch:
            _settle(entry, error)

    def _timed_out(self, count: int, exc: BaseException) -> ProducerTimeout:
        return ProducerTimeout(
            f"Redis did not confirm {count} {self.command} command(s) within {self.timeout}s "
            f"({exc or type(exc).__name__}); they may or may not have been {self.outcome}. "
            "Check that Redis is reachable, or raise the producer's timeout."
        )

    def _unreachable(self, exc: BaseException) -> EmitError:
        return EmitError(
            f"could not {self.command} to Redis ({type(exc).__name__}: {exc}); check that "
            "Redis is running and reachable"
        )

    def _refused(self, topic: str, exc: BaseException) -> EmitError:
        return EmitError(f"Redis refused {self.command} to {topic!r}: {exc}{self.refusal_hint}")

    def _closed_error(self) -> EmitError:
        return EmitError(
            f"this {type(self).__name__} is closed; emit through a started app/producer"
        )

    async def close(self) -> None:
        """Wait for sends in progress, then refuse new ones. The Redis client stays open."""
        self._closed = True
        while self._busy or self._flusher is not None:
            idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle.append(idle)
            await idle
        connection, self._connection = self._connection, None
        if connection is not None and self._pool is not None:
            released = self._pool.release(connection)
            if inspect.isawaitable(released):
                await released


async def _fresh(connection: AbstractConnection) -> None:
    """Drop ``connection`` if the server closed it (or left bytes on it) while it was idle, as
    the pool checks a connection before it lends it: the write then opens a new one, and a
    command is never written where its reply could not come back."""
    try:
        if await _compat.idle_bytes(connection):
            await connection.disconnect()
    except CONNECTION_ERRORS:
        await connection.disconnect()


async def _borrow(pool: ConnectionPool) -> AbstractConnection:
    """A connection of ``pool`` (redis-py before 5.3 wants a command name, later ones none)."""
    get: Any = pool.get_connection
    if inspect.signature(get).parameters["command_name"].default is inspect.Parameter.empty:
        connection: AbstractConnection = await get("PUBLISH")
    else:
        connection = await get()
    return connection


def _settle(entry: _Entry, error: BaseException | None, reply: Any = None) -> None:
    waiter, index = entry[2], entry[3]
    if isinstance(waiter, Outcomes):
        waiter.settle(index, error)
    elif waiter.done():
        pass  # the caller gave up (cancelled)
    elif error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(reply)
