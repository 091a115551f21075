"""``amqp://`` URLs: the backend that builds and owns RabbitMQ connections for an App."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, Literal

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractRobustConnection

from dispytch.backend import Backend
from dispytch.dead_letter import DeadLetter
from dispytch.errors import ConfigurationError
from dispytch.listener.consumer import Consumer
from dispytch.rabbitmq.consumer import RabbitMQGroupConsumer
from dispytch.rabbitmq.dead_letters import (
    DEFAULT_DEAD_LETTER_EXCHANGE,
    DeadLetterStore,
    read_dead_letters,
)
from dispytch.rabbitmq.dlq import RabbitMQDeadLetters
from dispytch.rabbitmq.failover import connect_nodes
from dispytch.rabbitmq.producer import RabbitMQProducer
from dispytch.rabbitmq.replies import RabbitMQInbox
from dispytch.request import ReplyInbox
from dispytch.security import ConnectionSecurity, connection_security
from dispytch.topic_rules import RABBITMQ

__all__ = ["RabbitMQBackend"]

QueueType = Literal["quorum", "classic"]


class RabbitMQBackend(Backend):
    """RabbitMQ from a URL: ``App("amqp://user:pass@host:5672/vhost", group="billing")``.

    What it declares (all durable, all idempotent):

    * one topic exchange (``exchange``, default ``"dispytch"``); an event's topic is its routing
      key, and topic segments are separated by ``.`` so a handler for ``user.{id}.events`` is
      bound as ``user.*.events``;
    * per consumer group, a queue named after the group, bound for each handler topic. It is a
      quorum queue by default (replicated, and it counts deliveries in ``x-delivery-count``,
      which the listener's ``max_deliveries`` uses to park a message that keeps crashing its
      process; on RabbitMQ before 4.3 a hand-back on shutdown counts as a delivery too);
      ``queue_type="classic"`` for a classic queue. Its prefetch is the app's ``concurrency``;
    * dead letters: a direct exchange (``dead_letter_exchange``, default ``"dispytch.dlq"``) and
      one classic queue ``dispytch.dlq.{group}`` per group (however many topics fail), plus a
      fallback queue ``dispytch.dlq-fallback.{group}``, declared on first use (see
      :mod:`dispytch.rabbitmq.dead_letters`). Read them back, per topic, with
      :meth:`dead_letters` (non-destructive).

    Emits return once RabbitMQ confirmed the message (publisher confirms) and routed it to a
    queue; an event no queue is bound for raises :class:`~dispytch.errors.EmitError`, so start
    the consuming app (or bind a queue) before emitting. Connections reconnect by themselves
    (``aio_pika.connect_robust``); messages in flight when a connection drops are redelivered.

    Security: ``amqps://user:password@host:5671/vhost`` is AMQP over TLS, the server's
    certificate verified against ``ssl_cafile`` (or the system's CAs) or checked by the
    ``ssl_context`` you pass; a TLS option on an ``amqp://`` URL turns TLS on as well.
    ``amqp://`` with a password logs a warning once (the password travels unencrypted).
    aio-pika's own URL options (``?cafile=…&no_verify_ssl=1``) still work when no Dispytch TLS
    option is given.

    Args:
        url: ``amqp://`` or ``amqps://`` URL; aio-pika query options (``?heartbeat=30``) work.
        exchange: name of the event exchange.
        queue_type: ``"quorum"`` or ``"classic"`` for the group queues.
        queue_arguments: extra ``x-`` arguments for the group queues, under RabbitMQ's names,
            e.g. ``{"x-max-length": 100000}`` (``x-queue-type`` comes from ``queue_type``).
        dead_letter_exchange: name of the dead-letter exchange.
        publish_timeout: seconds to wait for a publisher confirm (``None``: no limit).
        connect_timeout: seconds the first connection may take (default 4.5).
        **connect_options: passed to ``aio_pika.connect_robust`` under aio-pika's names, e.g.
            ``client_properties``, ``reconnect_interval``; the TLS options are Dispytch's
            (``ssl_context``, ``ssl_cafile``... see :mod:`dispytch.security`).
    """

    topic_delimiter = "."
    topic_rules = RABBITMQ
    security: ConnectionSecurity

    def __init__(
        self,
        url: str = "amqp://guest:guest@localhost:5672/",
        *,
        exchange: str = "dispytch",
        queue_type: QueueType = "quorum",
        queue_arguments: dict[str, Any] | None = None,
        dead_letter_exchange: str = DEFAULT_DEAD_LETTER_EXCHANGE,
        publish_timeout: float | None = 30.0,
        **connect_options: Any,
    ) -> None:
        self.security = connection_security(
            "RabbitMQ",
            url,
            connect_options,
            tls_schemes={"amqps": "amqp"},
            client_loggers=(
                "aiormq.connection",
                "aio_pika.connection",
                "aio_pika.robust_connection",
            ),
        )
        super().__init__(url, security=self.security, **connect_options)
        # The URL the clients get: amqps:// whenever TLS is on, without Dispytch's options.
        self._client_url = self.security.url
        if self.security.tls:
            rest = self._client_url.partition("://")[2]
            self._client_url = f"amqps://{rest}"
            native = any(f"{k}=" in rest for k in ("cafile", "capath", "certfile", "no_verify_ssl"))
            if self.security.tls_options or not native:
                connect_options["ssl_context"] = self.security.ssl_context
        if queue_type not in ("quorum", "classic"):
            raise ConfigurationError(
                f"queue_type must be 'quorum' or 'classic', got {queue_type!r}"
            )
        self.exchange_name = exchange
        self.queue_type = queue_type
        self.queue_arguments: dict[str, Any] = {"x-queue-type": queue_type}
        self.queue_arguments.update(queue_arguments or {})
        self.dead_letter_exchange = dead_letter_exchange
        self.publish_timeout = publish_timeout
        self.connect_options = connect_options
        self.connection: AbstractRobustConnection | None = None
        self._producer: RabbitMQProducer | None = None
        self._dead_letters: DeadLetterStore | None = None
        # Every group a consumer was made for: dead_letters() reads theirs, also after close().
        self._groups: list[str] = []

    async def open_connections(self) -> None:
        """Open the publishing connection and declare the event exchange."""
        connection = await self._open()
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            # A channel of their own: a dead-letter destination that fails (the broker closes
            # the channel on a declare it refuses) never takes emits down with it.
            dead_letters = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except BaseException:
            await connection.close()
            raise
        self.connection = connection
        self._producer = RabbitMQProducer(exchange, timeout=self.publish_timeout)
        self._dead_letters = DeadLetterStore(
            dead_letters, self.dead_letter_exchange, timeout=self.publish_timeout
        )

    async def _open(self) -> AbstractRobustConnection:
        """A robust connection, opened within ``connect_timeout`` or ConnectError."""
        # The connection object exists before it is connected; one whose first connection
        # failed (or timed out) must be closed, or it goes on reconnecting in the background.
        made: list[AbstractRobustConnection] = []
        try:
            connection: AbstractRobustConnection = await self.security.connect(
                # every node of a multi-host URL in turn (see dispytch.rabbitmq.failover)
                lambda: connect_nodes(self._client_url, self.connect_options, made),
                hint="check the address, that RabbitMQ runs there, the URL's user, password "
                "and vhost, and the TLS settings (amqps:// for a TLS listener)",
                auth_errors=(
                    aiormq.exceptions.AuthenticationError,
                    aiormq.exceptions.ProbableAuthenticationError,
                ),
                cause=_vhost_refusal,
            )
        except BaseException:
            for failed in made:
                with contextlib.suppress(Exception):
                    await failed.close()
            raise
        return connection

    def producer(self) -> RabbitMQProducer:
        return self.require(self._producer)

    def make_consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> Consumer:
        """The consumer of ``group``: queue ``group`` on its own connection, ``prefetch`` ahead."""
        if not group:
            raise ConfigurationError("a RabbitMQ consumer group needs a name (the queue name)")
        consumer = RabbitMQGroupConsumer(
            url=self._client_url,
            connect_options=self.connect_options,
            exchange=self.exchange_name,
            queue=group,
            queue_arguments=self.queue_arguments,
            prefetch=prefetch,
            dead_letters=self.require(self._dead_letters),
            safe_url=self.security.safe_url,
        )
        self._groups.append(group)
        return consumer

    def reply_inbox(self, group: str) -> ReplyInbox:
        """An exclusive auto-delete queue ``dispytch.reply.<random>`` on the app's connection
        (see :class:`~dispytch.rabbitmq.replies.RabbitMQInbox`)."""
        connection = self.require(self.connection)
        address = self.producer().reply_prefix + uuid.uuid4().hex
        return RabbitMQInbox(connection, self.exchange_name, address)

    async def close_connections(self) -> None:
        connection, self.connection = self.connection, None
        self._producer = self._dead_letters = None
        if connection is not None:
            await connection.close()

    def dead_letter_store(self, group: str | None = None) -> RabbitMQDeadLetters:
        """The dead letters of consumer group ``group`` (its dead-letter and fallback queues;
        AMQP cannot list queues, so a group is needed)."""
        return RabbitMQDeadLetters(self.require(self.connection), self.producer(), group)

    async def dead_letters(
        self, topic: str, limit: int = 100, *, group: str | None = None
    ) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``topic``, oldest first, from the dead-letter queues
        of ``group`` (default: the groups of the consumers this backend built) and from the
        per-topic queue ``{topic}.dlq`` earlier versions wrote.

        Non-destructive: they are fetched unacknowledged and handed back at once. Works before
        :meth:`connect` and after :meth:`close` too, on a short-lived connection.
        """
        groups = [group] if group is not None else list(dict.fromkeys(self._groups))
        if self.connection is not None:
            return await read_dead_letters(self.connection, topic, limit, groups)
        connection = await self._open()
        try:
            return await read_dead_letters(connection, topic, limit, groups)
        finally:
            await connection.close()


def _vhost_refusal(exc: BaseException) -> BaseException:
    """aiormq reports a refused ``connection.open`` (no access to the vhost, or no such vhost)
    as an unexpected frame; say what it means."""
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        return PermissionError(
            "RabbitMQ closed the connection after the login: the user has no access to this "
            "vhost, or the vhost does not exist"
        )
    return exc
