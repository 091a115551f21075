"""The reply inbox of an app on RabbitMQ: an exclusive, auto-delete queue of its own."""

from __future__ import annotations

import contextlib

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from dispytch.rabbitmq.wire import str_headers
from dispytch.request import Deliver, ReplyInbox

__all__ = ["RabbitMQInbox"]


class RabbitMQInbox(ReplyInbox):
    """A classic queue named ``address``, exclusive to the app's connection and deleted with it
    (or when the inbox closes), bound to the event exchange with ``address`` as routing key: a
    reply is published like an event (publisher confirm, mandatory routing), so a reply to an
    inbox that is gone raises on the replying side. Consumed without acks: a reply that arrives
    while nobody waits for it has no use later."""

    def __init__(self, connection: AbstractRobustConnection, exchange: str, address: str) -> None:
        self.connection = connection
        self.exchange = exchange
        self.address = address
        self._channel: AbstractChannel | None = None

    async def start(self, deliver: Deliver) -> None:
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(
                self.address,
                exclusive=True,
                auto_delete=True,
                arguments={"x-queue-type": "classic"},
            )
            exchange = await channel.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            await queue.bind(exchange, routing_key=self.address)

            async def on_reply(message: AbstractIncomingMessage) -> None:
                deliver(message.body, str_headers(message.headers))

            await queue.consume(on_reply, no_ack=True)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        self._channel = channel

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            # Its consumer goes with the channel, and the auto-delete queue with its consumer.
            await channel.close()
