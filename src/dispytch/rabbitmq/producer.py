"""The producer: publishes to an aio-pika exchange with ``mandatory`` and publisher confirms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange
from pydantic import BaseModel

from dispytch.emitter.producer import Producer
from dispytch.errors import ConfigurationError
from dispytch.rabbitmq.config import RabbitMQEventConfig
from dispytch.rabbitmq.wire import KEY_HEADER, encode_key, publish_confirmed

__all__ = ["RabbitMQProducer"]

_PERSISTENT = aio_pika.DeliveryMode.PERSISTENT


class RabbitMQProducer(Producer):
    """Publishes events to ``exchange`` (or one of several) with the topic as routing key.

    ``send`` returns once RabbitMQ confirmed the message and routed it to at least one queue:
    the message is published with ``mandatory=True``, and a returned (unroutable) message raises
    :class:`~dispytch.errors.EmitError`. A timeout raises
    :class:`~dispytch.emitter.producer.ProducerTimeout`. Concurrent sends are pipelined.

    Open the exchange's channel with ``publisher_confirms=True`` (aio-pika's default); without
    confirms RabbitMQ acknowledges nothing and ``send`` cannot know the message was stored.

    Args:
        exchange: an aio-pika exchange, or a list of them; an event picks one by name with
            ``RabbitMQEventConfig(exchange=...)``, otherwise the first is used.
        timeout: seconds to wait for the confirm; ``None`` waits as long as the connection lives.
    """

    def __init__(
        self,
        exchange: AbstractExchange | Sequence[AbstractExchange],
        timeout: float | None = None,
    ) -> None:
        exchanges = [exchange] if isinstance(exchange, AbstractExchange) else list(exchange)
        if not exchanges:
            raise ConfigurationError("RabbitMQProducer needs at least one exchange")
        self.exchanges: dict[str, AbstractExchange] = {ex.name: ex for ex in exchanges}
        self.default_exchange = exchanges[0]
        self.timeout = timeout

    def _exchange(self, name: str) -> AbstractExchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            known = ", ".join(repr(n) for n in self.exchanges)
            raise ConfigurationError(
                f"RabbitMQEventConfig(exchange={name!r}) names an exchange this producer does "
                f"not have ({known}); pass that exchange to RabbitMQProducer([...])"
            )
        return exchange

    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None:
        exchange = self.default_exchange
        amqp_headers: dict[str, Any] = {}
        if isinstance(config, RabbitMQEventConfig):
            if config.exchange is not None:
                exchange = self._exchange(config.exchange)
            if config.headers:
                amqp_headers.update(config.headers)
            if headers:
                amqp_headers.update(headers)
            if key is None and config.partition_key is not None:
                key = config.partition_key.encode()
            if key is not None:
                amqp_headers[KEY_HEADER] = encode_key(key)
            message = aio_pika.Message(
                payload,
                headers=amqp_headers or None,
                delivery_mode=config.delivery_mode or _PERSISTENT,
                priority=config.priority,
                expiration=config.expiration,
                content_type=config.content_type,
                content_encoding=config.content_encoding,
                correlation_id=config.correlation_id,
                reply_to=config.reply_to,
                message_id=config.message_id,
                type=config.type,
                app_id=config.app_id,
                user_id=config.user_id,
                timestamp=config.timestamp,
            )
        else:
            if headers:
                amqp_headers.update(headers)
            if key is not None:
                amqp_headers[KEY_HEADER] = encode_key(key)
            message = aio_pika.Message(
                payload, headers=amqp_headers or None, delivery_mode=_PERSISTENT
            )
        await publish_confirmed(exchange, message, topic, self.timeout)
