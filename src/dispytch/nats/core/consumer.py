"""NATSCoreConsumer: core NATS subscriptions in a queue group. At most once."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from types import MappingProxyType

import nats.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from dispytch.errors import ConfigurationError
from dispytch.listener.consumer import Consumer, Failure, Message
from dispytch.nats.dead_letters import DeadLetterStore
from dispytch.nats.wire import decode_key
from dispytch.routing import TopicPattern

__all__ = ["NATSCoreConsumer"]

logger = logging.getLogger("dispytch.nats")

_NO_HEADERS: MappingProxyType[str, str] = MappingProxyType({})


class NATSCoreConsumer(Consumer):
    """Messages from core NATS subscriptions, shared within a queue group.

    **At most once.** Core NATS delivers a message to the subscriptions that exist when it is
    published and never redelivers it. :meth:`ack` and :meth:`nack` do nothing: a message in
    flight when the process stops, or published while the connection is down, is lost. Use
    JetStream (``nats://``) when events must not be lost.

    With ``queue`` (the App's group), the subscriptions join that NATS queue group: each
    message goes to one member of the group, so processes of one group share the work and
    every group gets every message. Without it, every subscriber gets every message.

    Messages are buffered up to ``buffer_size`` ahead of the listener; beyond that the
    subscription's own pending queue fills, and past ``pending_msgs_limit`` messages (or
    ``pending_bytes_limit`` bytes) nats-py drops messages and reports a slow consumer.
    nats-py resubscribes by itself after a reconnect.

    Dead letters go to JetStream through ``dead_letters`` when given (durable even though the
    events are not); without it the listener's own dead-letter producer, if any, is used.

    Seed style::

        nc = await nats.connect("nats://localhost:4222")
        listener = EventListener(NATSCoreConsumer(nc, queue="billing"), topic_delimiter=".")

    The subscriptions are made for the subjects the listener's handlers need (``{field}``
    segments become ``*``), or for ``subjects`` when given.
    """

    def __init__(
        self,
        connection: NATSClient,
        *,
        subjects: Sequence[str] = (),
        queue: str = "",
        dead_letters: DeadLetterStore | None = None,
        buffer_size: int = 10_000,
        pending_msgs_limit: int = 65_536,
        pending_bytes_limit: int = 64 * 1024 * 1024,
    ) -> None:
        if buffer_size < 1:
            raise ConfigurationError(f"buffer_size must be >= 1, got {buffer_size}")
        if any(c in queue for c in " \t\r\n"):
            raise ConfigurationError(f"queue group {queue!r} may not hold whitespace")
        self.connection = connection
        self.subjects = list(subjects)
        self.queue = queue
        self.dead_letters = dead_letters
        self.buffer_size = buffer_size
        self.pending_msgs_limit = pending_msgs_limit
        self.pending_bytes_limit = pending_bytes_limit
        self.subscriptions: list[Subscription] = []
        self._buffer: deque[Msg] = deque()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False

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
                sub = await self.connection.subscribe(
                    subject,
                    queue=self.queue,
                    cb=self._on_message,
                    pending_msgs_limit=self.pending_msgs_limit,
                    pending_bytes_limit=self.pending_bytes_limit,
                )
            except nats.errors.Error as exc:
                raise ConfigurationError(
                    f"cannot subscribe to NATS subject {subject!r} ({type(exc).__name__}: "
                    f"{exc}); check the subject and the connection"
                ) from None
            self.subscriptions.append(sub)
        # The SUBs are on the wire once the server answers a PING: nothing published after
        # start() returns is missed.
        try:
            await self.connection.flush()
        except nats.errors.Error as exc:
            raise ConfigurationError(
                f"the NATS server did not confirm the subscriptions to {subjects} "
                f"({type(exc).__name__}: {exc}); check the connection"
            ) from None

    async def _on_message(self, msg: Msg) -> None:
        # Called by nats-py's per-subscription task, one message at a time: waiting here
        # for room leaves the rest in the subscription's pending queue.
        if len(self._buffer) >= self.buffer_size:
            self._room.clear()
            await self._room.wait()
        if self._closed:
            return
        self._buffer.append(msg)
        self._wakeup.set()

    async def listen(self) -> AsyncIterator[Message]:
        await self.start([])
        buffer, wakeup, room = self._buffer, self._wakeup, self._room
        while True:
            while buffer:
                msg = buffer.popleft()
                if not room.is_set():
                    room.set()
                headers = msg.headers
                yield Message(
                    topic=msg.subject,
                    payload=msg.data,
                    key=decode_key(headers) if headers else None,
                    headers=headers or _NO_HEADERS,
                )
            if self._closed:
                return
            wakeup.clear()
            await wakeup.wait()

    async def ack(self, message: Message) -> None:
        """Nothing to do: core NATS has no acknowledgement."""

    async def nack(self, message: Message) -> None:
        """Nothing to do: core NATS cannot redeliver; the message is lost."""

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        if self.dead_letters is None:
            return False
        await self.dead_letters.put(message, failure)
        return True

    async def close(self) -> None:
        """Unsubscribe; messages buffered but never listened to are lost (logged)."""
        if self._closed:
            return
        self._closed = True
        subscriptions, self.subscriptions = self.subscriptions, []
        for sub in subscriptions:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:  # connection closed: nothing to unsubscribe
                logger.debug("could not unsubscribe from %r: %s", sub.subject, exc)
        if self._buffer:
            logger.warning(
                "dropping %d core NATS message(s) received but not handled before the "
                "consumer closed (core NATS cannot redeliver them)",
                len(self._buffer),
            )
            self._buffer.clear()
        self._room.set()
        self._wakeup.set()
