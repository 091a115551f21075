"""The producer: publishes to an aio-pika exchange with ``mandatory`` and publisher confirms."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustChannel
from pamqp.commands import Basic
from pydantic import BaseModel

from dispytch.emitter.producer import Outgoing, Producer
from dispytch.errors import ConfigurationError
from dispytch.rabbitmq import _compat
from dispytch.rabbitmq.batch import Publish, publish_batch
from dispytch.rabbitmq.config import RabbitMQEventConfig
from dispytch.rabbitmq.wire import (
    KEY_HEADER,
    PublishRefusedError,
    confirm_error,
    encode_key,
    publish_error,
    wait_reconnected,
)
from dispytch.topic_rules import RABBITMQ

__all__ = ["RabbitMQProducer"]

_PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
#: Seconds between two reopenings of a publishing channel after nacks.
REOPEN_INTERVAL = 5.0

logger = logging.getLogger("dispytch.rabbitmq")


class RabbitMQProducer(Producer):
    """Publishes events to ``exchange`` (or one of several) with the topic as routing key.

    ``send`` returns once RabbitMQ confirmed the message and routed it to at least one queue:
    the message is published with ``mandatory=True``, and a returned (unroutable) message raises
    :class:`~dispytch.errors.EmitError`. A timeout raises
    :class:`~dispytch.emitter.producer.ProducerTimeout`. Concurrent sends are pipelined. A
    send is a batch of one (see :meth:`send_many`): no aio-pika message is built for it.

    Open the exchange's channel with ``publisher_confirms=True`` (aio-pika's default); without
    confirms RabbitMQ acknowledges nothing and ``send`` cannot know the message was stored.

    Args:
        exchange: an aio-pika exchange, or a list of them; an event picks one by name with
            ``RabbitMQEventConfig(exchange=...)``, otherwise the first is used. ``exchanges=``
            (Dispytch 0.10's keyword) is the same.
        timeout: seconds to wait for the confirm; ``None`` waits as long as the connection lives.
    """

    topic_rules = RABBITMQ

    def __init__(
        self,
        exchange: AbstractExchange | Sequence[AbstractExchange] = (),
        timeout: float | None = None,
        *,
        exchanges: Sequence[AbstractExchange] = (),
    ) -> None:
        given = exchanges or exchange
        chosen = [given] if isinstance(given, AbstractExchange) else list(given)
        if not chosen:
            raise ConfigurationError("RabbitMQProducer needs at least one exchange")
        self.exchanges: dict[str, AbstractExchange] = {ex.name: ex for ex in chosen}
        self.default_exchange = chosen[0]
        self.timeout = timeout
        self._reopening: asyncio.Task[None] | None = None
        self._reopened_at = -REOPEN_INTERVAL

    def _exchange(self, name: str) -> AbstractExchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            known = ", ".join(repr(n) for n in self.exchanges)
            raise ConfigurationError(
                f"RabbitMQEventConfig(exchange={name!r}) names an exchange this producer does "
                f"not have ({known}); pass that exchange to RabbitMQProducer([...])"
            )
        return exchange

    def _prepare(
        self,
        payload: bytes,
        config: BaseModel | None,
        headers: Mapping[str, str] | None,
        key: bytes | None,
    ) -> tuple[AbstractExchange, aio_pika.Message]:
        """The exchange and the AMQP message for one event."""
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
            return exchange, aio_pika.Message(
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
        if headers:
            amqp_headers.update(headers)
        if key is not None:
            amqp_headers[KEY_HEADER] = encode_key(key)
        return exchange, aio_pika.Message(
            payload, headers=amqp_headers or None, delivery_mode=_PERSISTENT
        )

    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None:
        (error,) = await self.send_many([Outgoing(topic, payload, config, key, headers)])
        if error is not None:
            raise error

    async def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Publish the whole batch in one write per exchange, then wait for every confirm.

        Same outcome per message as :meth:`send` (``None`` once confirmed and routed, else the
        error), at a fraction of its cost per message.
        """
        results: list[BaseException | None] = [None] * len(messages)
        groups: dict[str, tuple[AbstractExchange, list[int], list[Publish]]] = {}
        default = self.default_exchange
        for i, m in enumerate(messages):
            if m.config is None:  # the common case, framed without an aio-pika message
                exchange = default
                headers: dict[str, Any] | None = dict(m.headers) if m.headers else None
                if m.key is not None:
                    headers = headers or {}
                    headers[KEY_HEADER] = encode_key(m.key)
                publish = Publish(m.topic, m.payload, headers)
            else:
                try:
                    exchange, message = self._prepare(m.payload, m.config, m.headers, m.key)
                except Exception as exc:  # e.g. an exchange this producer does not have
                    results[i] = exc
                    continue
                publish = Publish(m.topic, m.payload, properties=message.properties)
            group = groups.get(exchange.name)
            if group is None:
                group = groups[exchange.name] = (exchange, [], [])
            group[1].append(i)
            group[2].append(publish)
        for exchange, indexes, batch in groups.values():
            outcomes = await self._publish(exchange, batch)
            for i, outcome in zip(indexes, outcomes, strict=True):
                results[i] = outcome
            if any(isinstance(outcome, PublishRefusedError) for outcome in outcomes):
                self._refused(exchange)
        return results

    def _refused(self, exchange: AbstractExchange) -> None:
        """RabbitMQ nacked a publish on ``exchange``'s channel: reopen the channel (at most every
        ``REOPEN_INTERVAL`` seconds).

        A queue over its length limit nacks, and a new channel changes nothing there; but a
        channel whose quorum-queue state went stale over leader changes nacks every later
        publish while a new channel's are confirmed (seen with RabbitMQ 3.10 after the second
        leader of a queue died: tests/faults/test_cluster.py). Publishes wait for the reopened
        channel as after a reconnect."""
        channel = getattr(exchange, "channel", None)
        now = time.monotonic()
        if (
            not isinstance(channel, AbstractRobustChannel)
            or self._reopening is not None
            or now - self._reopened_at < REOPEN_INTERVAL
        ):
            return
        self._reopened_at = now
        self._reopening = asyncio.create_task(self._reopen(channel), name="dispytch-reopen")

    async def _reopen(self, channel: AbstractRobustChannel) -> None:
        try:
            await channel.reopen()
            logger.info("RabbitMQ nacked a publish: reopened the publishing channel")
        except Exception as exc:  # the connection's own recovery takes over
            logger.warning("could not reopen the RabbitMQ channel after a nack: %s", exc)
        finally:
            self._reopening = None

    async def _publish(
        self, exchange: AbstractExchange, batch: list[Publish]
    ) -> list[BaseException | None]:
        topic = batch[0].routing_key
        try:
            # The whole path is bounded: the channel lock and a full write queue (a blocked
            # connection) count against the timeout as much as the confirms.
            async with asyncio.timeout(self.timeout):
                return await self._publish_now(exchange, batch)
        except TimeoutError as exc:
            return [publish_error(exc, exchange.name, topic, self.timeout)] * len(batch)

    async def _publish_now(
        self, exchange: AbstractExchange, batch: list[Publish]
    ) -> list[BaseException | None]:
        topic = batch[0].routing_key
        try:
            await wait_reconnected(exchange, topic, self.timeout)
            channel = await exchange.channel.get_underlay_channel()  # type: ignore[attr-defined]
            outcomes: list[Any]
            ledger = _compat.ledger(channel)
            if ledger is None:  # message by message, through aiormq's own API
                outcomes = await asyncio.gather(
                    *(
                        channel.basic_publish(
                            m.body,
                            exchange=exchange.name,
                            routing_key=m.routing_key,
                            properties=m.properties
                            or Basic.Properties(delivery_mode=_PERSISTENT, headers=m.headers),
                            mandatory=True,
                            timeout=self.timeout,
                        )
                        for m in batch
                    ),
                    return_exceptions=True,
                )
            else:
                outcomes = await publish_batch(ledger, exchange.name, batch, self.timeout)
        except Exception as exc:
            error = publish_error(exc, exchange.name, topic, self.timeout)
            return [error] * len(batch)
        return [
            confirm_error(outcome, exchange.name, m.routing_key)
            for m, outcome in zip(batch, outcomes, strict=True)
        ]
