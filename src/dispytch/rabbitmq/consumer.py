"""Consumers: one over queues the user declared (seed style), one that owns a group's queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from dispytch.errors import ConfigurationError
from dispytch.listener.consumer import Consumer, Failure, Message
from dispytch.rabbitmq.dead_letters import DEFAULT_DEAD_LETTER_EXCHANGE, DeadLetterStore
from dispytch.rabbitmq.wire import to_message
from dispytch.routing import TopicPattern

__all__ = ["RabbitMQConsumer", "RabbitMQGroupConsumer"]

logger = logging.getLogger("dispytch.rabbitmq")

#: Seconds to wait for basic.cancel-ok on close before giving up (closing the channel follows).
_CANCEL_TIMEOUT = 5.0


class RabbitMQConsumer(Consumer):
    """Consumes the aio-pika ``queues`` you declared and bound yourself (seed style).

    The topic of each message is its routing key. Messages are acknowledged only after they were
    handled (or dead-lettered); a message handed back on shutdown is ``basic.nack``-ed with
    ``requeue=True``. Set the channel's prefetch (``channel.set_qos(prefetch_count=...)``) to
    bound how many messages RabbitMQ pushes ahead of the handlers.

    Dead letters go to the durable direct exchange ``dead_letter_exchange`` and the queue
    ``{topic}.dlq``, published on the first queue's channel with a publisher confirm; pass
    ``dead_letter_exchange=None`` to leave dead letters to the listener's own producer.

    The delivery attempt is exact on quorum queues (``x-delivery-count``); on classic queues it
    is 2 for any redelivery, as RabbitMQ only says whether a message was delivered before.
    """

    def __init__(
        self,
        *queues: AbstractQueue,
        dead_letter_exchange: str | None = DEFAULT_DEAD_LETTER_EXCHANGE,
    ) -> None:
        self.queues: list[AbstractQueue] = list(queues)
        self._dead_letters: DeadLetterStore | None = (
            DeadLetterStore(self._first_channel, dead_letter_exchange)
            if dead_letter_exchange is not None
            else None
        )
        # Filled by aio-pika's delivery callbacks; RabbitMQ's prefetch bounds its size.
        self._buffer: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._consumer_tags: list[tuple[AbstractQueue, str]] = []
        self._closed = False

    def _first_channel(self) -> Any:
        return self.queues[0].channel

    async def _consume(self) -> None:
        if not self.queues:
            raise ConfigurationError(
                "RabbitMQConsumer has no queue to consume: pass the aio-pika queues, "
                "e.g. RabbitMQConsumer(queue)"
            )
        for queue in self.queues:
            tag = await queue.consume(self._deliver)
            self._consumer_tags.append((queue, tag))

    async def _deliver(self, incoming: AbstractIncomingMessage) -> None:
        if self._closed:
            await incoming.nack(requeue=True)
            return
        self._buffer.put_nowait(incoming)

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        """Start consuming now (seed style the queues are already bound by their user), so the
        ``basic.consume`` round trip is done before :meth:`listen` and never cut short by it."""
        if not self._consumer_tags:
            await self._consume()

    async def listen(self) -> AsyncIterator[Message]:
        if not self._consumer_tags:
            await self._consume()
        buffer = self._buffer
        while True:
            incoming = await buffer.get()
            if incoming is None:
                return
            try:
                incoming.channel  # noqa: B018 - raises once the delivering channel is gone
            except aiormq.exceptions.ChannelInvalidStateError:
                # Delivered on a channel that was lost since (a reconnect happened): RabbitMQ
                # has requeued it and will deliver it again on the new channel.
                continue
            yield to_message(incoming)

    async def ack(self, message: Message) -> None:
        await message.extra.ack()

    async def nack(self, message: Message) -> None:
        await message.extra.nack(requeue=True)

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        if self._dead_letters is None:
            return False
        await self._dead_letters.put(message, failure)
        return True

    async def close(self) -> None:
        """Cancel the subscriptions and hand buffered, never-listened messages back."""
        if self._closed:
            return
        self._closed = True
        for queue, tag in self._consumer_tags:
            if queue.channel.is_closed:
                # Nothing to cancel; and a robust channel would wait for a reconnect first.
                continue
            try:
                await asyncio.wait_for(queue.cancel(tag), _CANCEL_TIMEOUT)
            except Exception as exc:  # the channel went away meanwhile: nothing to cancel
                logger.debug("could not cancel consumer %s: %s", tag, exc)
        self._consumer_tags.clear()
        while not self._buffer.empty():
            incoming = self._buffer.get_nowait()
            if incoming is None:
                continue
            try:
                await incoming.nack(requeue=True)
            except Exception as exc:  # channel gone: the broker requeued it already
                logger.debug("could not hand back a buffered message: %s", exc)
        self._buffer.put_nowait(None)


class RabbitMQGroupConsumer(RabbitMQConsumer):
    """The consumer of one group, built by :class:`~dispytch.rabbitmq.RabbitMQBackend`.

    On :meth:`start` it opens its own robust connection (RabbitMQ advises separate connections
    for publishing and consuming, so publisher flow control never stalls deliveries), declares
    the group's durable queue, binds it to the topic exchange for every subscription and sets
    the channel's prefetch.
    """

    def __init__(
        self,
        *,
        url: str,
        connect_options: Mapping[str, Any],
        exchange: str,
        queue: str,
        queue_arguments: Mapping[str, Any],
        prefetch: int,
        dead_letters: DeadLetterStore,
        safe_url: str,
    ) -> None:
        super().__init__(dead_letter_exchange=None)
        self._dead_letters = dead_letters
        self._url = url
        self._safe_url = safe_url
        self._connect_options = dict(connect_options)
        self.exchange_name = exchange
        self.queue_name = queue
        self.queue_arguments = dict(queue_arguments)
        self.prefetch = prefetch
        self.connection: AbstractRobustConnection | None = None

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        if self.connection is not None:
            return
        self.connection = await connect(self._url, self._safe_url, self._connect_options)
        channel = await self.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self.prefetch)
        exchange = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        try:
            queue = await channel.declare_queue(
                self.queue_name, durable=True, arguments=self.queue_arguments or None
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            await self.connection.close()
            self.connection = None
            raise ConfigurationError(
                f"queue {self.queue_name!r} already exists with other arguments than "
                f"{self.queue_arguments} ({exc}); delete it (rabbitmqctl delete_queue "
                f"{self.queue_name}) or pass the matching queue_type/queue_arguments"
            ) from exc
        # Bindings of a durable queue outlive the process; a pattern dropped from the code
        # stays bound until removed by hand, and its events are acked as "no handler".
        for glob in dict.fromkeys(p.glob for p in subscriptions):
            await queue.bind(exchange, routing_key=glob)
        self.queues = [queue]
        await super().start(subscriptions)

    async def close(self) -> None:
        await super().close()
        if self.connection is not None:
            await self.connection.close()


async def connect(url: str, safe_url: str, options: Mapping[str, Any]) -> AbstractRobustConnection:
    """``aio_pika.connect_robust`` with an error that names the URL without its password."""
    try:
        connection: AbstractRobustConnection = await aio_pika.connect_robust(url, **options)
    except (ConnectionError, OSError, aiormq.exceptions.AMQPError) as exc:
        text = str(exc)
        password = _password(url)
        if password:
            text = text.replace(password, "***")
        raise ConfigurationError(
            f"cannot connect to RabbitMQ at {safe_url} ({type(exc).__name__}: {text}); check "
            "that the broker runs and that the URL's user, password and vhost are right"
        ) from None
    return connection


def _password(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None
