"""NATSCoreConsumer: core NATS subscriptions in a queue group. At most once."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence

import nats.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from dispytch.errors import ConfigurationError, SubscriptionLostError
from dispytch.listener.consumer import Consumer, Failure, Message
from dispytch.nats import _compat
from dispytch.nats.dead_letters import DeadLetterStore
from dispytch.nats.lag import round_trip
from dispytch.nats.wire import core_message
from dispytch.poison import Overflow
from dispytch.readahead import ReadAhead
from dispytch.routing import TopicPattern
from dispytch.untrusted import loggable

__all__ = ["DEFAULT_MAX_BUFFER_BYTES", "NATSCoreConsumer"]

logger = logging.getLogger("dispytch.nats")

#: Default cap of the payload bytes held ahead of the handlers.
DEFAULT_MAX_BUFFER_BYTES = 64 * 1024 * 1024


class NATSCoreConsumer(Consumer):
    """Messages from core NATS subscriptions, shared within a queue group.

    **At most once.** Core NATS delivers a message to the subscriptions that exist when it is
    published and never redelivers it. :meth:`ack` and :meth:`nack` do nothing: a message in
    flight when the process stops, or published while the connection is down, is lost. Use
    JetStream (``nats://``) when events must not be lost.

    With ``queue`` (the App's group), the subscriptions join that NATS queue group: each
    message goes to one member of the group, so processes of one group share the work and
    every group gets every message. Without it, every subscriber gets every message.

    **Bounded in bytes.** Messages are buffered up to ``buffer_size`` messages and
    ``max_buffer_bytes`` payload bytes ahead of the listener; beyond that up to
    ``pending_msgs_limit`` messages and ``pending_bytes_limit`` bytes more wait, and past those
    nats-py drops messages (core NATS has no backpressure towards publishers). nats-py's reader
    hands each message straight to the consumer, which keeps nats-py's pending limits (where
    the installed nats-py does not allow that, the messages wait in its own pending queue).
    The backend reports such drops with an ERROR line (at most one every 10 s) and counts them
    in :attr:`dropped`; with a connection of your own, nats-py calls your ``error_cb`` with
    ``SlowConsumerError``. nats-py resubscribes by itself after a reconnect.

    **Poison-proof.** A message Dispytch cannot read (a subject that is not UTF-8, a header
    block nats-py cannot parse, an ``x-dispytch-key-b64`` header that is not base64) never
    reaches a handler: it is handed to the listener marked
    :attr:`~dispytch.seam.Message.undecodable`, which dead-letters it (reason ``decode``) as
    any failed message. A watchdog checks the
    connection every ``watch_interval`` seconds: one whose reader died (so it hears nothing
    while it looks connected) is made to reconnect, and one nats-py closed for good makes
    :meth:`listen` raise :class:`~dispytch.errors.SubscriptionLostError`, so the service
    stops with an error instead of staying up deaf.

    Dead letters go to JetStream through ``dead_letters`` when given (durable even though the
    events are not); without it the listener's own dead-letter producer, if any, is used.

    Seed style::

        nc = await nats.connect("nats://localhost:4222")
        listener = EventListener(NATSCoreConsumer(nc, queue="billing"), topic_delimiter=".")

    The subscriptions are made for the subjects the listener's handlers need (``{field}``
    segments become ``*``), or for ``subjects`` when given.
    """

    acks = False  # at most once: nothing to acknowledge

    def __init__(
        self,
        connection: NATSClient,
        *,
        subjects: Sequence[str] = (),
        queue: str = "",
        dead_letters: DeadLetterStore | None = None,
        buffer_size: int = 100_000,
        max_buffer_bytes: int | None = None,
        pending_msgs_limit: int = 65_536,
        pending_bytes_limit: int = 64 * 1024 * 1024,
        watch_interval: float = 1.0,
        overflow: Overflow | None = None,
    ) -> None:
        if buffer_size < 1:
            raise ConfigurationError(f"buffer_size must be >= 1, got {buffer_size}")
        if max_buffer_bytes is not None and max_buffer_bytes < 1:
            raise ConfigurationError(f"max_buffer_bytes must be >= 1, got {max_buffer_bytes}")
        if any(c in queue for c in " \t\r\n"):
            raise ConfigurationError(f"queue group {queue!r} may not hold whitespace")
        self.connection = _compat.harden(connection)
        self.subjects = list(subjects)
        self.queue = queue
        self.dead_letters = dead_letters
        self.buffer_size = buffer_size
        self.max_buffer_bytes = max_buffer_bytes or DEFAULT_MAX_BUFFER_BYTES
        self.pending_msgs_limit = pending_msgs_limit
        self.pending_bytes_limit = pending_bytes_limit
        self.watch_interval = watch_interval
        self.subscriptions: list[Subscription] = []
        self._buffer: ReadAhead[Msg] = ReadAhead(buffer_size, self.max_buffer_bytes)
        #: What does not fit in the buffer, within the pending limits (when nats-py hands
        #: messages over directly; else nats-py's own pending queue holds it)
        self._queued: deque[Msg] = deque()
        self._queued_bytes = 0
        self._closed = False
        self._lost: SubscriptionLostError | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._overflow = overflow or Overflow(logger, "core NATS")
        #: Times the watchdog made a deaf connection reconnect.
        self.revived = 0

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes held in the buffer now."""
        return self._buffer.held_bytes

    @property
    def dropped(self) -> int:
        """Messages nats-py dropped because the buffers were full (counted when the backend
        made the connection)."""
        return self._overflow.dropped

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        """Subscribe to ``subjects``, or to what the handlers need; once."""
        if self.subscriptions or self._closed:
            return
        subjects = self.subjects or list(dict.fromkeys(p.glob for p in subscriptions))
        if not subjects:
            raise ConfigurationError(
                "NATSCoreConsumer has nothing to subscribe to: register a handler or pass "
                "subjects=[...]"
            )
        for subject in subjects:
            try:
                sub = await self._subscribe(subject, direct=True)
                if not _compat.deliver_directly(sub, self._accept):
                    # This nats-py cannot hand messages over directly: its callback, then.
                    await sub.unsubscribe()
                    sub = await self._subscribe(subject, direct=False)
            except nats.errors.Error as exc:
                raise ConfigurationError(
                    f"cannot subscribe to NATS subject {subject!r} ({type(exc).__name__}: "
                    f"{exc}); check the subject and the connection"
                ) from None
            self.subscriptions.append(sub)
        # The SUBs are on the wire, ahead of a PING, once the server answers it: nothing
        # published after start() returns is missed.
        try:
            await _compat.round_trip(self.connection)
        except (nats.errors.Error, TimeoutError) as exc:
            raise ConfigurationError(
                f"the NATS server did not confirm the subscriptions to {subjects} "
                f"({type(exc).__name__}: {exc}); check the connection"
            ) from None
        self._watchdog = asyncio.create_task(self._watch(), name="dispytch-nats-core-watchdog")

    def _subscribe(self, subject: str, *, direct: bool) -> Awaitable[Subscription]:
        return self.connection.subscribe(
            subject,
            queue=self.queue,
            cb=None if direct else self._on_message,
            pending_msgs_limit=self.pending_msgs_limit,
            pending_bytes_limit=self.pending_bytes_limit,
        )

    def _accept(self, msg: Msg) -> bool:
        # Called by nats-py's reader for each message (see _compat.deliver_directly): into the
        # read-ahead buffer while it has room, else queued as nats-py would (within its
        # pending limits); ``False`` has nats-py drop it as a slow consumer's.
        if self._closed:
            return True
        size = len(msg.data)
        queued = self._queued
        buffer = self._buffer
        if not queued and not buffer.full:
            buffer.put(msg, size)
            buffer.wake()
            return True
        if (0 < self.pending_msgs_limit <= len(queued)) or (
            0 < self.pending_bytes_limit <= self._queued_bytes + size
        ):
            return False
        queued.append(msg)
        self._queued_bytes += size
        return True

    def _refill(self) -> None:
        """Move queued messages into the read-ahead buffer while it has room."""
        queued = self._queued
        buffer = self._buffer
        while queued and not buffer.full:
            msg = queued.popleft()
            size = len(msg.data)
            self._queued_bytes -= size
            buffer.put(msg, size)

    async def _on_message(self, msg: Msg) -> None:
        # Called by nats-py's per-subscription task, one message at a time: waiting here
        # for room leaves the rest in the subscription's pending queue (bounded by nats-py).
        buffer = self._buffer
        if buffer.full:
            await buffer.for_room()
        if self._closed:
            return
        buffer.put(msg, len(msg.data))
        buffer.wake()

    async def _watch(self) -> None:
        """Every ``watch_interval``: revive a deaf connection; notice one closed for good."""
        connection = self.connection
        while not self._closed:
            await asyncio.sleep(self.watch_interval)  # cancelled by close()
            if self._closed:
                return
            if connection.is_closed:
                self._lost = SubscriptionLostError(
                    f"the NATS connection of the core NATS consumer was closed for good "
                    f"({loggable(connection.last_error or 'closed')}) and does not reconnect; "
                    "its subscriptions hear nothing: restart the service"
                )
                logger.error("%s", self._lost)
                self._buffer.wake()
                return
            if connection.is_connected and not _compat.reader_alive(connection):
                logger.warning(
                    "the NATS connection stopped reading (it would hear nothing while it looks "
                    "connected); reconnecting it"
                )
                self.revived += 1
                await _compat.force_reconnect(connection)

    async def listen(self) -> AsyncIterator[Message]:
        await self.start([])
        buffer = self._buffer
        take = buffer.take
        queued = self._queued
        while True:
            while (msg := take()) is not None:
                if queued:
                    self._refill()
                yield core_message(msg)
            if self._lost is not None and not self._closed:
                raise self._lost
            if self._closed:
                return
            await buffer.readable()

    async def ack(self, message: Message) -> None:
        """Nothing to do: core NATS has no acknowledgement."""

    async def nack(self, message: Message) -> None:
        """Nothing to do: core NATS cannot redeliver; the message is lost."""

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        if self.dead_letters is None:
            return False
        await self.dead_letters.put(message, failure, group=self.queue or "dispytch")
        return True

    async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool:
        """Store the message under the group's fallback subject of the JetStream dead-letter
        stream (``False`` without one)."""
        if self.dead_letters is None:
            return False
        await self.dead_letters.put(message, failure, group=self.queue or "dispytch", fallback=True)
        return True

    async def close(self) -> None:
        """Unsubscribe; messages buffered but never listened to are lost (logged)."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        subscriptions, self.subscriptions = self.subscriptions, []
        for sub in subscriptions:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:  # connection closed: nothing to unsubscribe
                logger.debug("could not unsubscribe from %r: %s", sub.subject, exc)
        dropped = self._buffer.close() + len(self._queued)
        self._queued.clear()
        self._queued_bytes = 0
        if dropped:
            logger.warning(
                "dropping %d core NATS message(s) received but not handled before the "
                "consumer closed (core NATS cannot redeliver them)",
                dropped,
            )

    async def lag(self) -> None:
        """Core NATS keeps no backlog: only checks that the server answers (PING/PONG)."""
        await round_trip(self.connection)
