"""RedisConsumer: reads a Redis Pub/Sub subscription. At-most-once: see the class docstring."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from dispytch.errors import ConfigurationError
from dispytch.listener.consumer import Consumer, Failure, Message
from dispytch.poison import Overflow
from dispytch.readahead import ReadAhead
from dispytch.redis import _compat
from dispytch.redis.connection import CONNECTION_ERRORS, Reconnection, pause, stop_reader
from dispytch.redis.dead_letters import DEFAULT_DEAD_LETTER_MAXLEN, DeadLetterWriter
from dispytch.redis.lag import ping
from dispytch.redis.records import NO_HEADERS, channel_message
from dispytch.redis.topics import subscription_glob
from dispytch.routing import TopicPattern

__all__ = ["DEFAULT_MAX_BUFFER_BYTES", "RedisConsumer"]

logger = logging.getLogger("dispytch.redis")

#: Default cap of the payload bytes a consumer reads ahead of its handlers.
DEFAULT_MAX_BUFFER_BYTES = 64 * 1024 * 1024

_DATA_TYPES = frozenset({"message", "pmessage"})
# A data reply's kind -> where its channel is ([kind, channel, data] or [kind, pattern,
# channel, data]); str kinds when the client decodes responses.
_CHANNEL_INDEX: dict[Any, int] = {b"message": 1, "message": 1, b"pmessage": 2, "pmessage": 2}
# Messages read in one go while the socket has data; then the event loop gets a turn.
_BATCH = 128
# Channels remembered (decoded name, which pattern delivers them) before the memo resets:
# channels matched by a pattern come off the wire, so the memo is bounded.
_CHANNEL_MEMO = 4096
_MISSING = object()


class RedisConsumer(Consumer):
    """Messages from a Redis Pub/Sub subscription.

    **At most once.** Redis Pub/Sub delivers a message only to the subscribers connected when it
    is published and never redelivers it. There is no acknowledgement: :meth:`ack` and
    :meth:`nack` do nothing, and a message in flight when the process stops, or published while
    the connection is down, is lost. Use Redis Streams (``redis+streams://``) when events must
    not be lost.

    Every subscriber receives every message: two processes subscribed to a channel both handle
    each event (there are no competing consumer groups in Pub/Sub). A message whose channel
    matches several subscriptions (a literal channel and a pattern, or two patterns) is handled
    once: Redis sends one copy per subscription, the consumer keeps one.

    **A full buffer drops.** A background task reads the connection as fast as Redis sends, into
    a buffer of at most ``buffer_size`` messages and ``max_buffer_bytes`` payload bytes;
    :meth:`listen` yields from that buffer. Pub/Sub has no backpressure: a reader that stopped
    reading would only move the backlog into Redis' output buffer for this client, and Redis
    disconnects a subscriber past ``client-output-buffer-limit pubsub`` (32 MB by default),
    losing everything queued there and everything published while it reconnects. So the reader
    never stops: a message that arrives while the buffer is full is **dropped**, counted in
    :attr:`dropped`, and reported by an ERROR line (at most one every 10 s, with the count).

    Dead letters, on the other hand, are durable: :meth:`dead_letter` appends the original bytes
    and the failure headers to the Redis Stream ``{topic}.dlq`` (trimmed to about
    ``dead_letter_maxlen`` entries); :meth:`dead_letter_fallback` to the group's fallback
    stream ``dispytch.fallback.{group}.dlq``. A message whose channel name is not UTF-8 is
    handed to the listener marked :attr:`~dispytch.seam.Message.undecodable`; the listener
    dead-letters it at once (to the fallback stream, its channel in base64 in the
    ``x-dispytch-original-topic-b64`` header) and it never reaches a handler.

    Messages carry no key (Pub/Sub has none) and no partition; a listener with
    ``ordering="partition"`` handles each channel's messages one at a time, in order.

    Seed style::

        pubsub = redis.pubsub()
        await pubsub.subscribe("user_events")      # and/or psubscribe("user:*")
        listener = EventListener(RedisConsumer(pubsub))

    A PubSub that is already subscribed is used as it is; one with no subscription is
    subscribed to what the listener's handlers need. When the connection is lost the reader
    reconnects by itself, with capped exponential backoff and jitter, and subscribes again.

    Args:
        pubsub: a ``redis.asyncio.client.PubSub``.
        redis: the client used to write dead letters; by default one sharing ``pubsub``'s
            connection pool.
        group: names the fallback dead-letter stream (the App's group).
        dead_letter_maxlen: approximate cap of each dead-letter stream; ``None`` for no cap.
        buffer_size: messages read ahead of the listener at most.
        max_buffer_bytes: payload bytes read ahead of the listener at most (64 MiB by default).
        poll_interval: seconds one read waits before checking whether the consumer is closing.
        reconnect_max_delay: cap of the wait between reconnection attempts, in seconds.
        dead_letter_timeout: seconds one dead-letter write may take before it fails.
        owns_pubsub: close ``pubsub`` and disconnect its connection pool on :meth:`close` (the
            backend sets it for the pool it built for the consumer).
    """

    acks = False  # at most once: nothing to acknowledge

    def __init__(
        self,
        pubsub: PubSub,
        *,
        redis: Redis | None = None,
        group: str = "dispytch",
        dead_letter_maxlen: int | None = DEFAULT_DEAD_LETTER_MAXLEN,
        buffer_size: int = 100_000,
        max_buffer_bytes: int | None = None,
        poll_interval: float = 1.0,
        reconnect_max_delay: float = 10.0,
        dead_letter_timeout: float = 10.0,
        owns_pubsub: bool = False,
    ) -> None:
        if buffer_size < 1:
            raise ConfigurationError(f"buffer_size must be >= 1, got {buffer_size}")
        if max_buffer_bytes is not None and max_buffer_bytes < 1:
            raise ConfigurationError(f"max_buffer_bytes must be >= 1, got {max_buffer_bytes}")
        if poll_interval <= 0:
            raise ConfigurationError(f"poll_interval must be > 0, got {poll_interval}")
        self.pubsub = pubsub
        self.group = group
        self.dead_letter_maxlen = dead_letter_maxlen
        self.buffer_size = buffer_size
        self.max_buffer_bytes = max_buffer_bytes or DEFAULT_MAX_BUFFER_BYTES
        self.poll_interval = poll_interval
        self.owns_pubsub = owns_pubsub
        self._redis = redis
        self._owns_redis = False  # a client given to us is someone else's to close
        self._writer = DeadLetterWriter(group, dead_letter_maxlen, dead_letter_timeout)
        # Every failed attempt is a warning: each one means more published messages are lost.
        self._reconnection = Reconnection(
            logger,
            "Redis Pub/Sub",
            reconnect_max_delay,
            consequence="; messages published meanwhile are not delivered",
            warn_every_attempt=True,
        )
        self._buffer: ReadAhead[Message] = ReadAhead(buffer_size, self.max_buffer_bytes)
        self._stopped = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closing = False
        self._ping_token = b""
        self._pong_seen = asyncio.Event()
        # channel -> its decoded name; channel -> the pattern whose copies are kept.
        self._topics: dict[Any, str] = {}
        self._owners: dict[Any, Any] = {}
        self._overflow = Overflow(logger, "Redis Pub/Sub")
        #: Messages a client built with ``decode_responses=True`` could not decode (skipped).
        self.skipped = 0
        #: Times the consumer reconnected after losing its connection (for tests and metrics).
        self.reconnects = 0

    # -- subscribing --------------------------------------------------------------------------

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        """SUBSCRIBE to literal topics and PSUBSCRIBE to patterns, then start reading.

        Returns once Redis confirmed the subscriptions, so events published afterwards arrive.
        A seed-style PubSub that its user already subscribed is left as it is.
        """
        if self._closing:
            raise ConfigurationError("this RedisConsumer is closed; build a new one")
        if subscriptions and (self.owns_pubsub or not self.pubsub.subscribed):
            channels = [p.raw for p in subscriptions if p.is_literal]
            patterns = [subscription_glob(p) for p in subscriptions if not p.is_literal]
            if channels:
                await self.pubsub.subscribe(*channels)
            if patterns:
                await self.pubsub.psubscribe(*patterns)
        if self.pubsub.subscribed:
            # Redis answers a connection's commands in order: once PING's reply arrives, the
            # subscriptions sent before it are in force.
            self._ping_token = uuid.uuid4().hex.encode()
            self._pong_seen.clear()
            self._ensure_reader()
            await self.pubsub.ping(self._ping_token)
            try:
                async with asyncio.timeout(max(10.0, 2 * self.poll_interval)):
                    await self._pong_seen.wait()
            except TimeoutError:
                raise ConfigurationError(
                    "Redis did not confirm the subscriptions within 10s; check that Redis is "
                    "reachable"
                ) from None
        self._ensure_reader()

    def _ensure_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="dispytch-redis-pubsub-reader")

    # -- reading ------------------------------------------------------------------------------

    async def listen(self) -> AsyncIterator[Message]:
        """Yield messages until the consumer is closed. Safe to cancel while waiting."""
        if self.pubsub.connection is None and not self.pubsub.subscribed:
            raise ConfigurationError(
                "the PubSub is not subscribed to anything: call pubsub.subscribe(...) / "
                "psubscribe(...) first, or register handlers so the listener subscribes"
            )
        self._ensure_reader()
        buffer = self._buffer
        take = buffer.take
        while True:
            message = take()
            if message is not None:
                yield message
                continue
            if self._reader is None or self._reader.done() or self._closing:
                if self._error is not None:
                    raise self._error
                return
            await buffer.readable()

    async def _read(self) -> None:
        try:
            await self._read_loop()
        except Exception as exc:
            self._error = exc
            logger.error("the Redis Pub/Sub reader stopped: %s: %s", type(exc).__name__, exc)
        finally:
            self._buffer.wake()  # wake listen() so it sees the end

    async def _read_loop(self) -> None:
        pubsub = self.pubsub
        buffer = self._buffer
        offer = buffer.offer
        topics = self._topics
        reconnection = self._reconnection
        drained: Any = None  # the connection has_reply and read_reply belong to
        has_reply: Callable[[], Awaitable[bool]] | None = None
        read_reply: Callable[[], Awaitable[Any]] | None = None
        while not self._closing:
            count = 0
            try:
                if reconnection.failures:
                    await self._reconnect()
                    logger.info(
                        "reconnected to Redis Pub/Sub after %d attempt(s); subscriptions renewed",
                        reconnection.succeeded(),
                    )
                    self.reconnects += 1
                # A timed read, so the closing flag is seen at least every poll_interval (and
                # health checks go out when due). It runs once per batch, not per message.
                response = await pubsub.parse_response(block=False, timeout=self.poll_interval)
                while response is not None:
                    index = _CHANNEL_INDEX.get(response[0]) if isinstance(response, list) else None
                    # response[1] is the channel or pattern a redis-py handler would be under.
                    if index is not None and not (
                        pubsub.patterns if index == 2 else pubsub.channels
                    ).get(response[1]):
                        # A data message with no redis-py handler: build the Message straight
                        # from the reply (handle_message would build a dict first).
                        channel = response[index]
                        if index == 2 and not self._keeps(response[1], channel):
                            pass  # another subscription delivers this message too
                        else:
                            data = response[index + 1]
                            topic = topics.get(channel)
                            if topic is not None and type(data) is bytes:
                                held = offer(Message(topic, data, None, NO_HEADERS), len(data))
                            else:
                                held = self._add(channel_message(channel, data), channel)
                            if not held:
                                self._drop()
                            else:
                                count += 1
                                if count == 1:
                                    buffer.wake()
                    else:
                        self._take(await pubsub.handle_message(response, True))  # type: ignore[no-untyped-call]
                    if count >= _BATCH or self._closing:
                        break
                    # Drain the replies already received without a timeout: the read below
                    # cannot block for long, as bytes of the next reply are already here.
                    connection = pubsub.connection
                    if connection is not drained:  # looked up once per connection
                        drained = connection
                        found = None if connection is None else _compat.reply_reader(connection)
                        has_reply, read_reply = found or (None, None)
                    if has_reply is None or read_reply is None or not await has_reply():
                        break  # (without a reply reader: the next one via parse_response)
                    response = await read_reply()
            except (*CONNECTION_ERRORS, UnicodeDecodeError) as exc:
                if self._closing:
                    return
                if count:
                    buffer.wake()
                if isinstance(exc, UnicodeDecodeError):
                    # A client built with decode_responses=True fails on a channel or payload
                    # that is not UTF-8, before we see it; its parser is reset by reconnecting.
                    self.skipped += 1
                    logger.error(
                        "skipped a Redis Pub/Sub message this client cannot decode (%s); build "
                        "the client with decode_responses=False so such messages are "
                        "dead-lettered instead",
                        exc,
                    )
                await pause(self._stopped, reconnection.failed(exc))
                continue
            if count:
                buffer.wake()
            if count >= _BATCH:
                # Reads from an already filled socket buffer never suspend; let the handlers run.
                await asyncio.sleep(0)

    def _keeps(self, pattern: Any, channel: Any) -> bool:
        """Whether this ``pmessage`` copy is the one to deliver.

        Redis sends a message once per subscription it matches: once for a literal
        subscription to its channel and once per matching pattern. The literal copy is kept;
        without one, the copies of the first pattern seen delivering the channel (it matches
        every message of that channel, so it delivers each of them).
        """
        pubsub = self.pubsub
        if pubsub.channels.get(channel, _MISSING) is None:
            return False  # subscribed literally (no redis-py handler): that copy is kept
        owner = self._owners.get(channel)
        if owner is None or owner not in pubsub.patterns:
            if len(self._owners) >= _CHANNEL_MEMO:
                self._owners.clear()
            self._owners[channel] = owner = pattern
        return bool(owner == pattern)

    def _add(self, message: Message, channel: Any) -> bool:
        """Buffer a message built by :func:`channel_message` (the slow path); ``False`` when
        the buffer is full."""
        if type(channel) is bytes and message.undecodable is None:
            if len(self._topics) >= _CHANNEL_MEMO:
                self._topics.clear()
            self._topics[channel] = message.topic
        return self._buffer.offer(message, len(message.payload))

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes held in the read-ahead buffer now."""
        return self._buffer.held_bytes

    @property
    def dropped(self) -> int:
        """Messages dropped because the read-ahead buffer was full."""
        return self._overflow.dropped

    def _drop(self) -> None:
        self._overflow.drop(len(self._buffer), self._buffer.held_bytes, self.max_buffer_bytes)

    def _take(self, raw: dict[str, Any] | None) -> None:
        """A reply handle_message parsed: a pong, or a message of a kind the fast path skips."""
        if raw is None:
            return
        kind = raw["type"]
        if kind in _DATA_TYPES:
            channel = raw["channel"]
            if kind == "pmessage" and not self._keeps(raw["pattern"], channel):
                return
            if self._add(channel_message(channel, raw["data"]), channel):
                self._buffer.wake()
            else:
                self._drop()
        elif kind == "pong":
            self._check_pong(raw["data"])

    def _check_pong(self, data: Any) -> None:
        token = data.encode() if isinstance(data, str) else data
        if token == self._ping_token:
            self._pong_seen.set()

    async def _reconnect(self) -> None:
        connection = self.pubsub.connection
        if connection is None:
            return
        await connection.disconnect()
        # The PubSub registered a connect callback that subscribes again to its channels and
        # patterns; connect() runs it.
        await connection.connect()

    async def _wake_reader(self) -> None:
        # A PING's reply ends the reader's current read at once, so closing does not wait for
        # the poll interval. If the connection is down the reader is not blocked in a read.
        if self.pubsub.connection is None or not self.pubsub.connection.is_connected:
            return
        try:
            async with asyncio.timeout(1.0):
                await self.pubsub.ping(b"dispytch-close")
        except (*CONNECTION_ERRORS, TimeoutError):
            pass

    # -- settling -----------------------------------------------------------------------------

    async def ack(self, message: Message) -> None:
        """Nothing to do: Pub/Sub has no acknowledgement (at-most-once)."""

    async def nack(self, message: Message) -> None:
        """Nothing to do: Pub/Sub cannot redeliver; the message is lost (at-most-once)."""

    def _dead_letter_client(self) -> Redis:
        if self._redis is None:
            self._redis = Redis(connection_pool=self.pubsub.connection_pool)
            self._owns_redis = True  # the client only; it does not close a pool it was given
        return self._redis

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        """XADD the original bytes and the failure headers to the stream ``{topic}.dlq``."""
        return await self._writer.write(
            self._dead_letter_client(), message, failure, fallback=False
        )

    async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool:
        """XADD the message to the group's fallback stream ``dispytch.fallback.{group}.dlq``."""
        return await self._writer.write(self._dead_letter_client(), message, failure, fallback=True)

    # -- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop reading; close the PubSub if this consumer owns it. Buffered messages are lost."""
        if self._closing:
            return
        self._closing = True
        self._stopped.set()
        self._buffer.wake()
        # The reader checks the flag at least every poll_interval.
        await stop_reader(self._reader, self._wake_reader, self.poll_interval + 5.0)
        self._buffer.close()
        if self.owns_pubsub:
            await self.pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            await self.pubsub.connection_pool.disconnect()
        if self._redis is not None and self._owns_redis:
            await self._redis.aclose()

    async def lag(self) -> None:
        """Pub/Sub keeps no backlog: only checks that Redis answers (``PING``)."""
        await ping(self._redis or Redis(connection_pool=self.pubsub.connection_pool))
