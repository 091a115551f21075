"""RedisStreamsConsumer: one consumer of a Redis Streams consumer group. At-least-once."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from dispytch.broker_retries import retried_message, retry_headers
from dispytch.errors import ConfigurationError
from dispytch.listener.consumer import Consumer, Failure, Message, RetryLater
from dispytch.poison import shown
from dispytch.redis.connection import CONNECTION_ERRORS, Reconnection, pause, stop_reader
from dispytch.redis.consumer import DEFAULT_MAX_BUFFER_BYTES
from dispytch.redis.dead_letters import DeadLetterWriter
from dispytch.redis.lag import streams_lag
from dispytch.redis.records import entry_message, stream_name
from dispytch.redis.retries import RetryScheduler
from dispytch.redis.streams.acks import AckBatcher
from dispytch.redis.topics import PatternMatcher
from dispytch.routing import TopicPattern
from dispytch.untrusted import loggable

__all__ = ["RedisStreamsConsumer", "default_consumer_name"]

logger = logging.getLogger("dispytch.redis.streams")

# Ids per XCLAIM command when refreshing or releasing many entries at once.
_IDS_PER_COMMAND = 1000
# How fast the remembered entry size (which sizes the next read) forgets a large entry.
_SIZE_DECAY = 0.98

#: A stream as the consumer holds it: its key as text, or as bytes when it is not UTF-8.
Stream = str | bytes


def default_consumer_name() -> str:
    """``hostname-pid-random``: unique per process, readable in ``XINFO CONSUMERS``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class RedisStreamsConsumer(Consumer):
    """Entries of one or more Redis Streams, read as one consumer of a consumer group.

    **At least once.** An entry read with ``XREADGROUP`` stays in the group's pending entries
    list (PEL) until it is acknowledged, and it is acknowledged only after it was handled (or
    dead-lettered). Every consumer of a group shares the work: each entry goes to one of them.

    * **Acks are batched**: :meth:`ack` only records the id; a background task sends one
      pipelined ``XACK`` per stream every ``ack_interval`` seconds, or at once when
      ``ack_batch`` are waiting, and on :meth:`close`. An ack not yet sent when the process dies
      is lost, so the entry is delivered again.
    * **A dead consumer's entries come back**: every consumer periodically looks for entries
      that have been pending for more than ``claim_idle_ms`` (``XPENDING … IDLE``) and claims
      them (``XCLAIM``), so the in-flight entries of a process killed with SIGKILL are delivered
      again to a live consumer after about ``claim_idle_ms``. Their ``delivery_attempt`` is
      Redis' delivery count. A live consumer refreshes the idle time of the entries it holds on
      the same schedule (``XCLAIM … JUSTID``), so an entry handled for longer than
      ``claim_idle_ms`` is not taken from a consumer that is still working on it.
    * **A restarted consumer resumes**: with a fixed ``consumer`` name, :meth:`start` first
      re-reads this consumer's own pending entries.
    * :meth:`nack` hands an entry back at once: it stays pending but is marked idle for
      ``claim_idle_ms``, so the next claim sweep of any consumer (this one included, within
      ``claim_idle_ms / 3``) delivers it again; closing does the same for entries read ahead and
      never handed to a handler (keeping their delivery count).
    * :meth:`dead_letter` appends the original bytes, key and failure headers to the stream
      ``{topic}.dlq``, :meth:`dead_letter_fallback` to the group's fallback stream
      ``dispytch.fallback.{group}.dlq`` (see :mod:`dispytch.redis.dead_letters`).
    * **Entries Dispytch cannot read** never reach a handler and never stop the consumer: an
      entry without a ``payload`` field, with a header that is not UTF-8, or in a stream whose
      key is not UTF-8 (found for a pattern) is handed to the listener marked
      :attr:`~dispytch.seam.Message.undecodable`, which dead-letters it at once (reason
      ``decode``, the unreadable parts base64-encoded in ``x-dispytch-undecodable*`` headers;
      to the fallback stream when the key is unreadable) and acknowledges it, so a restart
      does not see it again. If neither dead-letter stream takes it, the listener stops with
      :class:`~dispytch.errors.DeadLetterError` and the entry stays pending.
    * **Read-ahead is bounded** by ``prefetch`` entries and about ``max_buffer_bytes`` payload
      bytes: no read starts while the entries held reach it, and a read asks for no more
      entries than fit in the free bytes at the size of the largest recent entry.

    Topics with ``{segments}``: Redis has no pattern subscription for streams, so the consumer
    finds matching stream keys with ``SCAN … MATCH <glob> TYPE stream`` at start and every
    ``discovery_interval`` seconds, and creates the group on each new one. An event on a stream
    that did not exist before is therefore handled up to ``discovery_interval`` seconds late
    (never lost: the group is created at ``start_id`` ``"0"``, the stream's beginning). ``SCAN``
    walks the whole keyspace, so on a database with millions of keys raise the interval.

    **Broker-delayed retries** (``retry_mode="broker"``): a delayed copy is parked in a sorted
    set and moved to the group's stream ``dispytch.retry.{group}`` when due (see
    :mod:`dispytch.redis.retries`); every consumer of the group moves due copies, checking at
    least every ``poll_interval`` seconds, so a retry comes back up to that late.

    Messages carry the ``key`` field as their ordering key; ``partition`` and ``offset`` are
    ``None`` and ``extra`` is the entry id (``"1700000000000-0"``).

    Seed style::

        redis = Redis.from_url("redis://localhost:6379/0")        # decode_responses=False
        consumer = RedisStreamsConsumer(redis, streams=["user_events"], group="billing")
        listener = EventListener(consumer)

    Args:
        redis: a ``redis.asyncio.Redis`` client with ``decode_responses=False``.
        streams: stream keys to read, seed style. Without any, :meth:`start` reads what the
            listener's handlers need.
        group: the consumer group, created (``XGROUP CREATE … MKSTREAM``) when missing.
        consumer: this consumer's name in the group; by default ``hostname-pid-random``.
        prefetch: most entries held (read and not yet settled) at once.
        max_buffer_bytes: payload bytes held at once, about (64 MiB by default).
        claim_idle_ms: an entry pending longer than this is taken from its consumer as dead.
            Must exceed the longest pause of a live process (its refresh runs every third of it).
        poll_interval: longest single ``XREADGROUP … BLOCK``, in seconds; also how long closing
            may wait for the read in progress.
        discovery_interval: seconds between ``SCAN``s for new streams matching a pattern.
        ack_interval: seconds acks are collected before they are sent.
        ack_batch: acks that are sent at once, without waiting for ``ack_interval``.
        dead_letter_maxlen: approximate cap of each ``.dlq`` stream; ``None`` keeps all.
        start_id: where a newly created group starts: ``"0"`` (every entry already in the
            stream, the default) or ``"$"`` (only new ones).
        reconnect_max_delay: cap of the wait between reconnection attempts, in seconds.
        owns_client: close ``redis`` and its connection pool on :meth:`close`.
    """

    supports_broker_retries = True

    def __init__(
        self,
        redis: Redis,
        streams: Sequence[str] = (),
        *,
        group: str,
        consumer: str | None = None,
        prefetch: int = 64,
        claim_idle_ms: int = 30_000,
        poll_interval: float = 1.0,
        discovery_interval: float = 1.0,
        ack_interval: float = 0.005,
        ack_batch: int = 512,
        dead_letter_maxlen: int | None = None,
        start_id: str = "0",
        reconnect_max_delay: float = 10.0,
        max_buffer_bytes: int | None = None,
        dead_letter_timeout: float = 10.0,
        owns_client: bool = False,
    ) -> None:
        if isinstance(streams, str):
            raise ConfigurationError(f"streams must be a list of stream keys, not {streams!r}")
        if not group:
            raise ConfigurationError("group must be a non-empty consumer group name")
        if prefetch < 1:
            raise ConfigurationError(f"prefetch must be >= 1, got {prefetch}")
        if max_buffer_bytes is not None and max_buffer_bytes < 1:
            raise ConfigurationError(f"max_buffer_bytes must be >= 1, got {max_buffer_bytes}")
        if claim_idle_ms < 1:
            raise ConfigurationError(f"claim_idle_ms must be >= 1, got {claim_idle_ms}")
        if poll_interval <= 0 or discovery_interval <= 0 or ack_interval < 0 or ack_batch < 1:
            raise ConfigurationError(
                "poll_interval and discovery_interval must be > 0, ack_interval >= 0 and "
                "ack_batch >= 1"
            )
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "RedisStreamsConsumer needs a client with decode_responses=False (payloads are "
                "bytes); build it with Redis.from_url(url) or pass decode_responses=False"
            )
        self.redis = redis
        self.group = group
        self.name = consumer or default_consumer_name()
        self.prefetch = prefetch
        self.max_buffer_bytes = max_buffer_bytes or DEFAULT_MAX_BUFFER_BYTES
        self.claim_idle_ms = claim_idle_ms
        self.poll_interval = poll_interval
        self.discovery_interval = discovery_interval
        self.dead_letter_maxlen = dead_letter_maxlen
        self._writer = DeadLetterWriter(group, dead_letter_maxlen, dead_letter_timeout, ids=True)
        self.start_id = start_id
        self.owns_client = owns_client
        self._named = consumer is not None
        self._seed_streams = list(streams)
        # The blocking read gets a connection of its own, so acks never queue behind it.
        self._reader_client = Redis(
            connection_pool=redis.connection_pool, single_connection_client=True
        )
        self._reader_id: int | None = None
        self._acks = AckBatcher(
            redis,
            group,
            interval=ack_interval,
            max_pending=ack_batch,
            reconnect_max_delay=reconnect_max_delay,
        )
        self._reconnection = Reconnection(logger, "Redis", reconnect_max_delay)
        # A third of the idle limit: a live consumer refreshes its entries well before then.
        self._sweep_interval = min(max(claim_idle_ms / 3000, 0.02), 10.0)
        # Refill the read-ahead when a quarter of it is free, so reads stay batched.
        self._low_water = max(1, prefetch // 4)
        self._literal: list[str] = []
        self._matchers: list[PatternMatcher] = []
        #: stream -> {entry id: delivery attempt} of entries read and not yet settled.
        self._inflight: dict[Stream, dict[str, int]] = {}
        self._read_ids: dict[Stream, str] = {}  # the XREADGROUP argument: stream -> ">"
        self._names: dict[bytes, Stream] = {}
        self._recover: dict[Stream, str] = {}  # stream -> cursor into this consumer's own PEL
        self._held = 0
        self._entry_size = 0.0  # recent largest payload size read (0: nothing read yet)
        #: Payload bytes of the entries held now (read and not yet settled).
        self.held_bytes = 0
        self._buffer: deque[Message] = deque()
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._stopped = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._started = False
        self._closing = False
        self._next_sweep = 0.0
        self._next_discovery = 0.0
        self._retries: RetryScheduler | None = None
        self._retry_stream: str | None = None
        self._next_move = math.inf
        #: Times the consumer reconnected after losing its connection (for tests and metrics).
        self.reconnects = 0

    @property
    def streams(self) -> list[Stream]:
        """The streams read right now (literal ones and those found for patterns); a key that
        is not UTF-8 is listed as bytes."""
        return list(self._read_ids)

    @property
    def acks_pending(self) -> int:
        """Acks recorded and not yet sent to Redis."""
        return self._acks.pending

    # -- subscribing --------------------------------------------------------------------------

    def use_broker_retries(self, delays: Sequence[float] = ()) -> None:
        """Read the group's retry stream too, and move due delayed copies into it."""
        if self._retries is None:
            self._retries = RetryScheduler(self.redis, self.group)
            self._retry_stream = self._retries.stream
            self._next_move = 0.0

    async def start(self, subscriptions: Sequence[TopicPattern] = ()) -> None:
        """Create the group on each stream (and on those matching a pattern), then start reading.

        Streams given to the constructor (seed style) take precedence over ``subscriptions``.
        Returns once the groups exist, so events emitted afterwards are received.
        """
        if self._closing:
            raise ConfigurationError("this RedisStreamsConsumer is closed; build a new one")
        if self._started:
            return
        if self._seed_streams:
            self._literal = list(dict.fromkeys(self._seed_streams))
        else:
            self._literal = list(dict.fromkeys(p.raw for p in subscriptions if p.is_literal))
            self._matchers = [PatternMatcher(p) for p in subscriptions if not p.is_literal]
        if self._retry_stream is not None and self._retry_stream not in self._literal:
            self._literal.append(self._retry_stream)
        await self._create_groups(self._literal)
        for stream in self._literal:
            self._add_stream(stream)
        await self._discover()
        self._started = True
        self._reader = asyncio.create_task(self._read_loop(), name="dispytch-redis-streams-read")

    async def _create_groups(self, streams: Sequence[Stream]) -> list[Stream]:
        """XGROUP CREATE … MKSTREAM on each stream; return those where the group now exists."""
        if not streams:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xgroup_create(stream, self.group, id=self.start_id, mkstream=True)
        results = await pipe.execute(raise_on_error=False)
        ready: list[Stream] = []
        for stream, result in zip(streams, results, strict=True):
            if isinstance(result, CONNECTION_ERRORS):
                raise result
            if isinstance(result, ResponseError) and not str(result).startswith("BUSYGROUP"):
                raise ConfigurationError(
                    f"cannot create consumer group {self.group!r} on {loggable(stream)}: "
                    f"{result}; the key must be a stream (or not exist)"
                )
            ready.append(stream)
        return ready

    def _add_stream(self, stream: Stream) -> None:
        if stream in self._read_ids:
            return
        self._read_ids[stream] = ">"
        self._names[_raw(stream)] = stream
        self._inflight.setdefault(stream, {})
        self._recover[stream] = "-"

    async def _discover(self) -> None:
        """SCAN for streams matching the patterns; join the group on the new ones."""
        if not self._matchers:
            self._next_discovery = math.inf
            return
        self._next_discovery = time.monotonic() + self.discovery_interval
        found: list[Stream] = []
        for matcher in self._matchers:
            async for raw in self.redis.scan_iter(match=matcher.glob, count=1000, _type="stream"):
                stream = stream_name(raw)
                # A key that is not UTF-8 is matched as its escaped text; its entries are
                # dead-lettered as unreadable when read.
                text = stream if isinstance(stream, str) else shown(stream)
                if stream not in self._read_ids and matcher(text) and stream not in found:
                    found.append(stream)
        if not found:
            return
        try:
            ready = await self._create_groups(found)
        except ConfigurationError as exc:  # the key changed type between SCAN and XGROUP
            logger.warning("skipping a stream found for a pattern: %s", exc)
            return
        for stream in ready:
            self._add_stream(stream)
        logger.debug("now also reading %s", ", ".join(loggable(s) for s in ready))

    # -- reading ------------------------------------------------------------------------------

    async def listen(self) -> AsyncIterator[Message]:
        """Yield entries until the consumer is closed (or its reader failed for good)."""
        if not self._started:
            await self.start()
        buffer = self._buffer
        readable = self._readable
        while True:
            while buffer:
                yield buffer.popleft()
            if self._error is not None:
                raise self._error
            if self._closing:
                return
            readable.clear()
            self._room.set()  # the read-ahead is empty: the reader may refill it now
            await readable.wait()

    async def _read_loop(self) -> None:
        reconnection = self._reconnection
        rejoin = False
        while not self._closing:
            try:
                if reconnection.failures:
                    await self._reconnected()
                    rejoin = False
                if rejoin:
                    await self._rejoin()
                    rejoin = False
                await self._step()
            except CONNECTION_ERRORS as exc:
                if self._closing:
                    return
                await pause(self._stopped, reconnection.failed(exc))
            except ResponseError as exc:
                if str(exc).startswith("NOGROUP"):
                    # A stream (or the group) was deleted, or Redis restarted without its data.
                    logger.warning(
                        "Redis lost consumer group %r (%s); creating it again", self.group, exc
                    )
                    rejoin = True
                    await pause(
                        self._stopped, self.poll_interval / 10
                    )  # no storm if it keeps happening
                    continue
                self._fail(exc)
                return
            except Exception as exc:
                self._fail(exc)
                return

    def _fail(self, exc: BaseException) -> None:
        logger.error("Redis Streams reader stopped: %s: %s", type(exc).__name__, exc)
        self._error = exc
        self._readable.set()

    async def _reconnected(self) -> None:
        await self.redis.ping()
        # The reader's own connection is the one that failed: back only once it answers too
        # (else every failure would look like the first of an outage, with the shortest wait).
        await self._reader_client.ping()
        self._reader_id = None
        await self._rejoin()
        self.reconnects += 1
        failures = self._reconnection.succeeded()
        logger.info("reconnected to Redis after %d attempt(s); reading again", failures)

    async def _rejoin(self) -> None:
        """Create the group again where it is missing; forget streams that are gone."""
        await self._create_groups(self._literal)
        for stream in list(self._read_ids):
            if stream not in self._literal:
                del self._read_ids[stream]
                self._names.pop(_raw(stream), None)
                self._recover.pop(stream, None)
        await self._discover()

    async def _step(self) -> None:
        now = time.monotonic()
        if self._matchers and now >= self._next_discovery:
            await self._discover()
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_interval
            await self._refresh()
            await self._claim_idle()
        if now >= self._next_move and self._retries is not None:
            due = await self._retries.move_due()
            self._next_move = now + min(self.poll_interval, math.inf if due is None else due)
        if self._recover:
            await self._recover_own()
            return
        room = self.prefetch - self._held
        wait = max(
            0.001, min(self._next_sweep, self._next_discovery, self._next_move) - time.monotonic()
        )
        free_bytes = self.max_buffer_bytes - self.held_bytes
        if (
            room <= 0
            or not self._read_ids
            or (self._buffer and room < self._low_water)
            or (free_bytes <= 0 and self._held)
        ):
            self._room.clear()
            try:
                async with asyncio.timeout(min(wait, self.poll_interval)):
                    await self._room.wait()
            except TimeoutError:
                pass
            return
        if self._reader_id is None:
            self._reader_id = int(await self._reader_client.client_id())
        # Ask for about as many entries as fit in the free bytes (at least one); the very
        # first read, before any size is known, asks for one.
        room = min(room, max(1, int(free_bytes / self._entry_size))) if self._entry_size else 1
        per_stream = -(-room // len(self._read_ids))
        reply = await self._reader_client.xreadgroup(
            self.group,
            self.name,
            self._read_ids,  # type: ignore[arg-type]
            count=per_stream,
            block=max(1, int(min(wait, self.poll_interval) * 1000)),
        )
        if reply:
            self._take(reply)

    def _take(self, reply: Any) -> None:
        names = self._names
        items = reply.items() if isinstance(reply, dict) else reply  # RESP3 or RESP2
        for raw_stream, entries in items:
            stream = names.get(raw_stream)
            if stream is None:  # not asked for; cannot happen, but never crash on it
                stream = stream_name(raw_stream)
                self._inflight.setdefault(stream, {})
            inflight = self._inflight[stream]
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                inflight[entry_id] = 1
                message = entry_message(stream, entry_id, fields, 1)
                self._hold(message if stream != self._retry_stream else retried_message(message))
        self._readable.set()

    def _take_claimed(self, stream: Stream, claimed: Any, attempts: dict[bytes, int]) -> None:
        inflight = self._inflight[stream]
        for raw_id, fields in claimed or ():
            if fields is None:  # deleted from the stream meanwhile
                continue
            entry_id = raw_id.decode()
            if entry_id in inflight:
                continue
            attempt = attempts.get(raw_id, 1)
            inflight[entry_id] = attempt
            message = entry_message(stream, entry_id, fields, attempt)
            self._hold(message if stream != self._retry_stream else retried_message(message))
        self._readable.set()

    def _hold(self, message: Message) -> None:
        size = len(message.payload)
        self._held += 1
        self.held_bytes += size
        # The largest recent entry size, decaying slowly: a read never asks for many large
        # entries on the strength of a run of small ones.
        self._entry_size = max(size, self._entry_size * _SIZE_DECAY, 1.0)
        self._buffer.append(message)

    async def _recover_own(self) -> None:
        """Deliver again this consumer's own pending entries (a restart with the same name)."""
        for stream, cursor in list(self._recover.items()):
            room = self.prefetch - self._held
            if room <= 0:
                self._room.clear()
                try:
                    async with asyncio.timeout(self.poll_interval):
                        await self._room.wait()
                except TimeoutError:
                    pass
                return
            if not self._named:  # a fresh random name has no history
                del self._recover[stream]
                continue
            pending: list[dict[str, Any]] = await self.redis.xpending_range(
                stream, self.group, cursor, "+", room, consumername=self.name
            )
            if len(pending) < room:
                del self._recover[stream]
            else:
                self._recover[stream] = "(" + pending[-1]["message_id"].decode()
            await self._claim(stream, pending, 0)

    async def _claim(self, stream: Stream, pending: list[dict[str, Any]], min_idle: int) -> None:
        inflight = self._inflight.get(stream, {})
        wanted = [p for p in pending if p["message_id"].decode() not in inflight]
        if not wanted:
            return
        # XCLAIM adds one to the delivery count Redis reported: this is that next delivery.
        attempts = {p["message_id"]: int(p["times_delivered"]) + 1 for p in wanted}
        claimed = await self.redis.xclaim(
            stream, self.group, self.name, min_idle, [p["message_id"] for p in wanted]
        )
        self._take_claimed(stream, claimed, attempts)

    async def _claim_idle(self) -> None:
        """Take entries pending longer than ``claim_idle_ms`` (their consumer is presumed dead)."""
        room = self.prefetch - self._held
        streams = list(self._read_ids)
        if room <= 0 or not streams:
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xpending_range(stream, self.group, "-", "+", room, idle=self.claim_idle_ms)
        results = await pipe.execute(raise_on_error=False)
        for stream, pending in zip(streams, results, strict=True):
            if isinstance(pending, CONNECTION_ERRORS):
                raise pending
            if isinstance(pending, BaseException) or not pending:
                continue  # NOGROUP: the XREADGROUP that follows handles it
            room = self.prefetch - self._held
            if room <= 0:
                return
            await self._claim(stream, pending[:room], self.claim_idle_ms)

    async def _refresh(self) -> None:
        """Reset the idle time of the entries this consumer holds: it is alive and working."""
        await self._xclaim_ids({s: list(ids) for s, ids in self._inflight.items() if ids})

    async def _xclaim_ids(
        self, ids: dict[Stream, list[Any]], *, idle: int | None = None, retry: int | None = None
    ) -> None:
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream, stream_ids in ids.items():
            for start in range(0, len(stream_ids), _IDS_PER_COMMAND):
                pipe.xclaim(
                    stream,
                    self.group,
                    self.name,
                    0,
                    stream_ids[start : start + _IDS_PER_COMMAND],
                    idle=idle,
                    retrycount=retry,
                    justid=True,
                )
        await pipe.execute(raise_on_error=False)

    # -- settling -----------------------------------------------------------------------------

    def _stream(self, message: Message) -> Stream:
        """The stream ``message`` was read from (a retry's topic is its original one)."""
        if message.retry is not None and self._retry_stream is not None:
            return self._retry_stream
        return message.topic

    def _entry(self, message: Message) -> tuple[Stream, Any]:
        """``(stream, entry id)`` of a message: ``extra`` holds both for an entry Dispytch could
        not read (its topic may not be the stream's key), the id alone otherwise."""
        extra = message.extra
        if type(extra) is tuple:
            return extra[0], extra[1]
        return self._stream(message), extra

    def _settled(self, message: Message) -> bool:
        stream, entry_id = self._entry(message)
        return self._release_slot(stream, entry_id, len(message.payload))

    def _release_slot(self, stream: Stream, entry_id: Any, size: int) -> bool:
        inflight = self._inflight.get(stream)
        if inflight is None or inflight.pop(entry_id, None) is None:
            return False  # settled twice, or not ours
        self._held -= 1
        self.held_bytes -= size
        if self.prefetch - self._held >= self._low_water:
            self._room.set()
        return True

    async def ack(self, message: Message) -> None:
        """Record the ack; it is sent with others in one pipelined XACK within ``ack_interval``."""
        if self._settled(message):
            self._acks.add(*self._entry(message))

    async def nack(self, message: Message) -> None:
        """Hand the entry back: it stays pending, marked idle so the next claim sweep of any
        consumer in the group delivers it again (its delivery count goes up by one)."""
        if self._settled(message):
            stream, entry_id = self._entry(message)
            await self._release({stream: [entry_id]})
            self._next_sweep = 0.0

    async def _release(self, ids: dict[Stream, list[str]], retry: int | None = None) -> None:
        try:
            await self._xclaim_ids(ids, idle=self.claim_idle_ms, retry=retry)
        except CONNECTION_ERRORS as exc:
            # Still pending under this consumer's name: claimed after claim_idle_ms instead.
            logger.debug("could not hand back entries at once (%s: %s)", type(exc).__name__, exc)

    async def retry_later(self, message: Message, retries: Sequence[RetryLater]) -> None:
        """Park a delayed copy per retry (see :mod:`dispytch.redis.retries`), then ack."""
        scheduler = self._retries
        if scheduler is None:
            raise ConfigurationError("use_broker_retries() was not called before start()")
        now = time.time()
        for retry in retries:
            headers = retry_headers(message, retry, int((now + retry.delay) * 1000))
            await scheduler.park(retry.delay, message.payload, message.key, headers)
            self._next_move = min(self._next_move, time.monotonic() + retry.delay)
        await self.ack(message)

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        """XADD the original bytes, key, headers and failure headers to ``{topic}.dlq``."""
        return await self._writer.write(self.redis, message, failure, fallback=False)

    async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool:
        """XADD the message to the group's fallback stream ``dispytch.fallback.{group}.dlq``."""
        return await self._writer.write(self.redis, message, failure, fallback=True)

    # -- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop reading, send the collected acks, hand back what was read and not settled."""
        if self._closing:
            return
        self._closing = True
        self._stopped.set()
        self._room.set()
        self._readable.set()
        # The reader checks the flag at least every poll_interval.
        await stop_reader(self._reader, self._unblock_reader, self.poll_interval + 5.0)
        await self._acks.close()
        await self._hand_back()
        await self._forget_consumer()
        self._buffer.clear()
        await self._reader_client.aclose()
        if self.owns_client:
            await self.redis.aclose()
            await self.redis.connection_pool.disconnect()

    async def _unblock_reader(self) -> None:
        if self._reader_id is None:
            return
        try:
            async with asyncio.timeout(1.0):
                await self.redis.execute_command(  # type: ignore[no-untyped-call]
                    "CLIENT", "UNBLOCK", self._reader_id
                )
        except (*CONNECTION_ERRORS, ResponseError, TimeoutError):
            pass

    async def _hand_back(self) -> None:
        """Entries read ahead and never handed out go back with their delivery count unchanged;
        entries handed out and never settled go back as they are."""
        unread: dict[tuple[Stream, int], list[str]] = {}
        for message in self._buffer:
            stream, entry_id = self._entry(message)
            unread.setdefault((stream, message.delivery_attempt - 1), []).append(str(entry_id))
            self._inflight[stream].pop(str(entry_id), None)
        for (stream, retry), ids in unread.items():
            await self._release({stream: ids}, retry=retry)
        await self._release({s: list(ids) for s, ids in self._inflight.items() if ids})
        self._inflight.clear()
        self._held = 0
        self.held_bytes = 0

    async def _forget_consumer(self) -> None:
        """Remove a generated consumer name from the groups where it holds nothing, so names
        of stopped processes do not pile up in ``XINFO CONSUMERS``."""
        if self._named or not self._read_ids:
            return
        streams = list(self._read_ids)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for stream in streams:
                pipe.xpending_range(stream, self.group, "-", "+", 1, consumername=self.name)
            pending = await pipe.execute(raise_on_error=False)
            pipe = self.redis.pipeline(transaction=False)
            for stream, entries in zip(streams, pending, strict=True):
                if isinstance(entries, list) and not entries:
                    pipe.xgroup_delconsumer(stream, self.group, self.name)
            await pipe.execute(raise_on_error=False)
        except CONNECTION_ERRORS:
            pass

    async def lag(self) -> dict[str, int]:
        """Entries of each stream not yet delivered to the group (``XINFO GROUPS``)."""
        return await streams_lag(self.redis, self.group, self.streams)


def _raw(stream: Stream) -> bytes:
    return stream if isinstance(stream, bytes) else stream.encode()
