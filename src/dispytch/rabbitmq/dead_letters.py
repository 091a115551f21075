"""Dead letters on RabbitMQ.

Dead letters of topic ``T`` are stored in the durable classic queue ``T.dlq``, bound with
routing key ``T`` to a durable direct exchange (``dispytch.dlq`` by default). A separate
exchange keeps them away from the event exchange, so a consumer bound to ``orders.*`` never
receives the dead letters of ``orders.created``. Each dead letter is the original body with
the original headers and properties, plus ``x-dispytch-*`` headers saying what failed. Queues
are declared on first use (and remembered), published with ``mandatory`` and a publisher
confirm; the listener acks the original message only after that confirm.

RabbitMQ's own dead-lettering (``x-dead-letter-exchange``) is not used because it cannot add
the failure details.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq.abc import DeliveredMessage

from dispytch.dead_letter import DeadLetter, dead_letter_topic
from dispytch.errors import ConfigurationError, EmitError
from dispytch.listener.consumer import Failure, Message
from dispytch.rabbitmq.wire import (
    DELIVERY_COUNT_HEADER,
    KEY_HEADER,
    decode_key,
    encode_key,
    publish_confirmed,
    str_headers,
)

__all__ = ["DEFAULT_DEAD_LETTER_EXCHANGE", "DeadLetterStore", "read_dead_letters"]

DEFAULT_DEAD_LETTER_EXCHANGE = "dispytch.dlq"

ChannelSource = AbstractChannel | Callable[[], AbstractChannel]


class DeadLetterStore:
    """Publishes dead letters through ``channel`` (which must have publisher confirms on).

    ``channel`` may be a callable returning the channel, for channels that exist only later.
    """

    def __init__(
        self,
        channel: ChannelSource,
        exchange: str = DEFAULT_DEAD_LETTER_EXCHANGE,
        *,
        timeout: float | None = 30.0,
    ) -> None:
        self._channel_source = channel
        self.exchange_name = exchange
        self.timeout = timeout
        self._exchange: AbstractExchange | None = None
        self._declared: set[str] = set()
        self._lock = asyncio.Lock()

    def _channel(self) -> AbstractChannel:
        source = self._channel_source
        return source if isinstance(source, AbstractChannel) else source()

    async def _destination(self, topic: str) -> AbstractExchange:
        exchange = self._exchange
        if exchange is not None and topic in self._declared:
            return exchange
        async with self._lock:
            channel = self._channel()
            if self._exchange is None:
                if not getattr(channel, "publisher_confirms", True):
                    raise ConfigurationError(
                        "dead letters need publisher confirms, but the channel was opened with "
                        "publisher_confirms=False; open it with publisher_confirms=True or pass "
                        "dead_letter_exchange=None to the consumer"
                    )
                self._exchange = await channel.declare_exchange(
                    self.exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
                )
            if topic not in self._declared:
                queue = await channel.declare_queue(dead_letter_topic(topic), durable=True)
                await queue.bind(self._exchange, routing_key=topic)
                self._declared.add(topic)
            return self._exchange

    async def put(self, message: Message, failure: Failure) -> None:
        """Store ``message``'s original bytes with failure headers; return once confirmed."""
        exchange = await self._destination(message.topic)
        delivered = message.extra
        props = delivered.header.properties if isinstance(delivered, DeliveredMessage) else None
        headers: dict[str, Any] = {}
        for name, value in ((props.headers if props else None) or message.headers).items():
            if name != DELIVERY_COUNT_HEADER:
                # pamqp decodes non-UTF-8 strings to bytes but can only encode bytearray.
                headers[name] = bytearray(value) if isinstance(value, bytes) else value
        if message.key is not None:
            headers[KEY_HEADER] = encode_key(message.key)
        headers.update(failure.headers(message))
        properties: dict[str, Any] = {}
        if props is not None:
            if delivered.exchange:
                headers["x-dispytch-original-exchange"] = delivered.exchange
            if props.message_id:
                # Not reused as the dead letter's own message_id: aiormq matches returns to
                # publishes by message_id, which must be unique among in-flight publishes.
                headers["x-dispytch-original-message-id"] = props.message_id
            # expiration and user_id are dropped on purpose: a dead letter must not expire, and
            # the broker rejects a user_id that is not the publishing connection's user.
            properties = {
                "content_type": props.content_type,
                "content_encoding": props.content_encoding,
                "correlation_id": props.correlation_id,
                "reply_to": props.reply_to,
                "type": props.message_type,
                "app_id": props.app_id,
                "priority": props.priority,
                "timestamp": props.timestamp,
            }
        await publish_confirmed(
            exchange,
            aio_pika.Message(
                message.payload,
                headers=headers,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                **properties,
            ),
            message.topic,
            self.timeout,
        )


async def read_dead_letters(
    connection: AbstractConnection, topic: str, limit: int = 100
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``topic``, oldest first, left in their queue.

    Reads with ``basic.get`` on a short-lived channel and hands everything back with one
    ``basic.nack(multiple, requeue)``; a classic queue puts requeued messages back in their
    original positions. Messages are invisible to other readers of the ``.dlq`` queue for the
    few milliseconds this takes, and come back with the ``redelivered`` flag set.
    """
    transport = connection.transport
    if transport is None:
        raise EmitError("not connected to RabbitMQ; call connect() (or start the app) first")
    # A plain aiormq channel: a robust one would try to reopen itself after the broker closes
    # it, which a passive declare of a missing queue does (404).
    channel = await transport.connection.channel()
    queue = dead_letter_topic(topic)
    out: list[DeadLetter] = []
    try:
        try:
            declared = await channel.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return []
        last_tag: int | None = None
        for _ in range(min(limit, declared.message_count or 0)):
            got: DeliveredMessage = await channel.basic_get(queue, no_ack=False)
            if not isinstance(got.delivery, aiormq.spec.Basic.GetOk):
                break
            last_tag = got.delivery.delivery_tag
            raw = got.header.properties.headers or {}
            headers = str_headers(raw)
            out.append(
                DeadLetter(
                    topic=headers.get("x-dispytch-original-topic", topic),
                    payload=got.body,
                    headers=headers,
                    key=decode_key(raw.get(KEY_HEADER)),
                )
            )
        if last_tag is not None:
            await channel.basic_nack(last_tag, multiple=True, requeue=True)
    finally:
        if not channel.is_closed:
            await channel.close()
    return out
