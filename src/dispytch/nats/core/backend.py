"""``nats+core://`` URLs: core NATS (no JetStream) for an App. At most once."""

from __future__ import annotations

import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATSClient

from dispytch.backend import Backend
from dispytch.dead_letter import DeadLetter
from dispytch.errors import ConfigurationError
from dispytch.listener.consumer import Consumer
from dispytch.nats.backend import connect_nats, nats_security, stream_replicas
from dispytch.nats.core.consumer import NATSCoreConsumer
from dispytch.nats.core.producer import NATSCoreProducer
from dispytch.nats.dead_letters import (
    DEFAULT_DEAD_LETTER_STREAM,
    DeadLetterStore,
    read_dead_letters,
)
from dispytch.nats.replies import NATSInbox
from dispytch.poison import Overflow
from dispytch.request import ReplyInbox
from dispytch.security import ConnectionSecurity
from dispytch.topic_rules import NATS

__all__ = ["NATSCoreBackend"]

logger = logging.getLogger("dispytch.nats")


class NATSCoreBackend(Backend):
    """Core NATS from a URL: ``App("nats+core://[user:pass@]host:4222", group="billing")``.

    **At most once**: core NATS keeps nothing. An event published while no subscriber of a
    group is connected, while a subscriber is reconnecting, or held by a process that stops,
    is lost. Emits return once the server has the event (a ``PING``/``PONG`` round trip shared
    by concurrent emits), not once a subscriber got it. For at-least-once delivery use
    ``nats://`` (JetStream).

    An event's topic is its NATS subject; segments are separated by ``.``, so a handler for
    ``user.{id}.events`` subscribes to ``user.*.events``. Each group is a NATS queue group:
    its processes share the events, and every group gets each event.

    Dead letters go to the JetStream stream ``dead_letter_stream`` (subjects
    ``{dead_letter_stream}.{topic}``, as with ``nats://``) when the server has JetStream; if
    it does not, :meth:`connect` logs a warning and dead letters are dropped (logged).

    Security as with ``nats://`` (see :class:`~dispytch.nats.NATSBackend`), with
    ``nats+core+tls://`` for TLS.

    Args:
        url: ``nats+core://[user:password@|token@]host:port``; ``nats+core+tls://`` for TLS.
        dead_letter_stream: name of the JetStream dead-letter stream (and subject prefix).
        dead_letter_stream_options: ``StreamConfig`` fields for the dead-letter stream.
        publish_timeout: seconds an emit waits for the server's ``PONG``.
        buffer_size: messages a consumer holds ahead of its handlers at most; with the App's
            ``max_buffer_bytes`` (payload bytes, 64 MiB by default) it bounds what is held
            (beyond it, nats-py's subscription queue).
        pending_msgs_limit: messages nats-py queues for a subscription before it drops.
        pending_bytes_limit: payload bytes nats-py queues for a subscription before it drops.
        connect_timeout: seconds the first connection may take (default 4.5).
        **connect_options: passed to ``nats.connect`` under nats-py's names.
    """

    topic_delimiter = "."
    topic_rules = NATS
    security: ConnectionSecurity

    def __init__(
        self,
        url: str = "nats+core://127.0.0.1:4222",
        *,
        dead_letter_stream: str = DEFAULT_DEAD_LETTER_STREAM,
        dead_letter_stream_options: dict[str, Any] | None = None,
        publish_timeout: float = 10.0,
        buffer_size: int = 100_000,
        pending_msgs_limit: int = 65_536,
        pending_bytes_limit: int = 64 * 1024 * 1024,
        **connect_options: Any,
    ) -> None:
        self.security = nats_security(url, connect_options)
        super().__init__(url, security=self.security, **connect_options)
        if not dead_letter_stream or any(c in dead_letter_stream for c in ".*> \t"):
            raise ConfigurationError(
                f"dead_letter_stream={dead_letter_stream!r} is not a valid JetStream stream "
                "name: use letters, digits, '_' and '-'"
            )
        self.dead_letter_stream = dead_letter_stream
        self.dead_letter_stream_options = dict(dead_letter_stream_options or {})
        self.publish_timeout = publish_timeout
        self.buffer_size = buffer_size
        self.pending_msgs_limit = pending_msgs_limit
        self.pending_bytes_limit = pending_bytes_limit
        self.connect_timeout = self.security.connect_timeout
        self.connect_options = connect_options
        self.connection: NATSClient | None = None
        self._producer: NATSCoreProducer | None = None
        self._dead_letters: DeadLetterStore | None = None
        self._overflow = Overflow(logger, "core NATS (nats-py's subscription queue)")

    async def open_connections(self) -> None:
        """Connect; set up the JetStream dead-letter stream when the server has JetStream."""
        connection = await connect_nats(
            self.security, self.connect_options, overflow=self._overflow
        )
        try:
            self.dead_letter_stream_options.setdefault("num_replicas", stream_replicas(connection))
            store: DeadLetterStore | None = DeadLetterStore(
                connection.jetstream(timeout=self.publish_timeout),
                self.dead_letter_stream,
                stream_options=self.dead_letter_stream_options,
                timeout=self.publish_timeout,
                connection=connection,
            )
            try:
                await store.ensure()  # type: ignore[union-attr]
            except (
                nats.errors.NoRespondersError,
                nats.errors.TimeoutError,
                nats.js.errors.ServiceUnavailableError,
            ) as exc:
                logger.warning(
                    "the NATS server at %s has no JetStream (%s): dead letters will be "
                    "dropped (logged); enable JetStream (nats-server -js) to keep them",
                    self.security.safe_url,
                    type(exc).__name__,
                )
                store = None
        except BaseException:
            await connection.close()
            raise
        self.connection = connection
        self._producer = NATSCoreProducer(connection, timeout=self.publish_timeout)
        self._dead_letters = store

    def producer(self) -> NATSCoreProducer:
        return self.require(self._producer)

    def make_consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> Consumer:
        """A subscriber in queue group ``group`` (``prefetch`` does not apply: core NATS
        pushes; ``buffer_size`` and ``max_buffer_bytes`` bound what is held ahead of the
        handlers)."""
        return NATSCoreConsumer(
            self.require(self.connection),
            queue=group,
            dead_letters=self._dead_letters,
            buffer_size=self.buffer_size,
            max_buffer_bytes=max_buffer_bytes,
            pending_msgs_limit=self.pending_msgs_limit,
            pending_bytes_limit=self.pending_bytes_limit,
            overflow=self._overflow,
        )

    def reply_inbox(self, group: str) -> ReplyInbox:
        """A subscription on ``_INBOX.<random>`` (see :class:`~dispytch.nats.replies.NATSInbox`)."""
        return NATSInbox(self.require(self.connection))

    async def close_connections(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.close()
        connection, self.connection = self.connection, None
        self._dead_letters = None
        if connection is not None and not connection.is_closed:
            await connection.close()

    async def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``topic`` from JetStream, oldest first."""
        connection = self.connection
        owned = connection is None
        if connection is None:
            connection = await connect_nats(self.security, self.connect_options)
        try:
            return await read_dead_letters(
                connection.jetstream(timeout=self.publish_timeout),
                self.dead_letter_stream,
                self.dead_letter_stream,
                topic,
                limit,
            )
        finally:
            if owned:
                await connection.close()
