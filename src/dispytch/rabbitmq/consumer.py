"""Consumers: one over queues the user declared (seed style), one that owns a group's queue."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractQueue, AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel, DeliveredMessage

from dispytch.broker_retries import retried_message, retry_headers, tier_ms
from dispytch.errors import ConfigurationError, SubscriptionLostError
from dispytch.listener.consumer import Consumer, Failure, Message, RetryLater
from dispytch.rabbitmq import _compat
from dispytch.rabbitmq.acks import ChannelAcks
from dispytch.rabbitmq.dead_letters import DEFAULT_DEAD_LETTER_EXCHANGE, DeadLetterStore
from dispytch.rabbitmq.failover import connect
from dispytch.rabbitmq.lag import queue_depths
from dispytch.rabbitmq.wire import lenient_message, to_message
from dispytch.routing import TopicPattern

__all__ = ["RabbitMQConsumer", "RabbitMQGroupConsumer"]

logger = logging.getLogger("dispytch.rabbitmq")

#: Seconds to wait for basic.cancel-ok on close before giving up (closing the channel follows).
_CANCEL_TIMEOUT = 5.0
#: Most acks folded into one ``basic.ack(multiple=True)`` (the group consumer also keeps it at
#: half its prefetch, so finished messages never fill the broker's window).
_ACK_BATCH = 64
#: Seconds a finished message waits at most for its batched ``basic.ack``.
_ACK_DELAY = 0.005


class RabbitMQConsumer(Consumer):
    """Consumes the aio-pika ``queues`` you declared and bound yourself (seed style).

    The topic of each message is its routing key. Messages are acknowledged only after they were
    handled (or dead-lettered); a message handed back on shutdown is ``basic.nack``-ed with
    ``requeue=True``. Set the channel's prefetch (``channel.set_qos(prefetch_count=...)``) to
    bound how many messages RabbitMQ pushes ahead of the handlers.

    Deliveries are taken from the channel's aiormq channel (``basic.consume`` below aio-pika, so
    no aio-pika message object and task per delivery); on a robust channel the subscriptions are
    made again whenever aio-pika reopens it after a reconnect.

    Dead letters go to the durable direct exchange ``dead_letter_exchange`` and the queue
    ``dispytch.dlq.<first queue's name>`` (fallback: ``dispytch.dlq-fallback.<...>``; see
    :mod:`dispytch.rabbitmq.dead_letters`), published on the first queue's channel with a
    publisher confirm; pass ``dead_letter_exchange=None`` to leave dead letters to the
    listener's own producer.

    A delivery pamqp cannot decode (a routing key, property or header name that is not UTF-8, a
    timestamp out of range) no longer breaks the connection: it is read leniently and handed to
    the listener marked :attr:`~dispytch.seam.Message.undecodable`, which dead-letters it
    (reason ``decode``) and acknowledges it.

    Acks are batched: one ``basic.ack(multiple=True)`` settles the contiguous run of finished
    deliveries of a channel, sent once 64 of them are due, after at most 5 ms, when the consumer
    is idle or waits for more messages, and on close. It never covers a delivery still being
    handled (nor one of another consumer on the same channel). Hand-backs (``basic.nack``) go
    out at once.

    The delivery attempt is exact on quorum queues (``x-delivery-count``, which RabbitMQ writes
    there itself); on classic queues it is 2 for any redelivery, as RabbitMQ only says whether a
    message was delivered before (an ``x-delivery-count`` header there came from a publisher
    and is ignored). A queue counts as quorum when it was declared with
    ``arguments={"x-queue-type": "quorum"}``.
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
        # Filled by the delivery callback; RabbitMQ's prefetch bounds its size.
        self._buffer: asyncio.Queue[DeliveredMessage | None] = asyncio.Queue()
        # (queue, the aiormq channel consuming it, consumer tag) per live subscription.
        self._consumer_tags: list[tuple[AbstractQueue, AbstractChannel, str]] = []
        self._watched: list[AbstractRobustChannel] = []  # robust channels we resubscribe on
        self._subscribed = False
        self._closed = False
        self._failure: BaseException | None = None
        self._recoveries: set[asyncio.Task[None]] = set()
        # Batched acks: what is settled per channel; one lock keeps ack/nack frames in the
        # order they were decided (a multiple ack sent early would swallow a later nack).
        self._acks: dict[AbstractChannel, ChannelAcks] = {}
        self._ack_batch = _ACK_BATCH
        self._in_flight = 0  # handed to the listener, not settled yet
        self._send_lock = asyncio.Lock()
        self._armed = False  # a timed flush is scheduled or running
        self._timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None
        #: Consumer tags of quorum queues, the only ones whose delivery count is RabbitMQ's.
        self._counted: set[str] = set()

    #: the group queue delayed retries expire into (set by the group consumer)
    _retry_queue: str | None = None

    def _first_channel(self) -> Any:
        return self.queues[0].channel

    @property
    def dead_letter_group(self) -> str:
        """Names the dead-letter queue ``dispytch.dlq.<group>``: the first queue's name."""
        return self.queues[0].name if self.queues else ""

    async def _consume(self) -> None:
        if not self.queues:
            raise ConfigurationError(
                "RabbitMQConsumer has no queue to consume: pass the aio-pika queues, "
                "e.g. RabbitMQConsumer(queue)"
            )
        self._subscribed = True
        for queue in self.queues:
            await self._subscribe(queue)
            channel = queue.channel
            if isinstance(channel, AbstractRobustChannel) and channel not in self._watched:
                channel.reopen_callbacks.add(self._on_reopen)
                self._watched.append(channel)

    async def _subscribe(self, queue: AbstractQueue) -> None:
        amqp = await queue.channel.get_underlay_channel()
        amqp.on_consumer_cancel_callbacks.add(self._on_cancelled)
        if not _compat.protect(amqp.connection):
            logger.warning(
                "this aiormq version is not one Dispytch can guard: a delivery whose routing "
                "key or header names are not UTF-8 will break the connection"
            )
        ok = await amqp.basic_consume(queue.name, self._deliver)
        tag = ok.consumer_tag or ""
        if _is_quorum(queue):
            self._counted.add(tag)
        if self._closed:  # closed while subscribing (a reconnect racing close())
            await amqp.basic_cancel(tag)
            return
        self._consumer_tags.append((queue, amqp, tag))

    async def _on_cancelled(self, frame: Any) -> None:
        """RabbitMQ cancelled one of our consumers (its queue was deleted, say). Called by the
        channel's frame reader, which must not wait for an answer here: the recovery runs in a
        task of its own."""
        lost = [t for t in self._consumer_tags if t[2] == frame.consumer_tag]
        if not lost or self._closed:
            return
        self._consumer_tags.remove(lost[0])
        task = asyncio.get_running_loop().create_task(self._recover(lost[0][0], lost[0][1]))
        self._recoveries.add(task)
        task.add_done_callback(self._recoveries.discard)

    async def _recover(self, queue: AbstractQueue, amqp: AbstractChannel) -> None:
        """Consume ``queue`` again, or end :meth:`listen` with an error saying why not."""
        try:
            await self._subscribe(queue)
        except Exception as exc:
            if isinstance(queue.channel, AbstractRobustChannel) and amqp.is_closed:
                # The failed consume closed the channel: aio-pika reopens it, declares the
                # queue again and _on_reopen consumes it.
                logger.warning(
                    "RabbitMQ cancelled the consumer of queue %r; consuming it again once "
                    "the channel is reopened (%s: %s)",
                    queue.name,
                    type(exc).__name__,
                    exc,
                )
                return
            self._fail(
                SubscriptionLostError(
                    f"RabbitMQ cancelled the consumer of queue {queue.name!r} (was the queue "
                    f"deleted?) and consuming it again failed ({type(exc).__name__}: {exc}); "
                    "restart the service once the queue exists"
                )
            )

    def _fail(self, error: BaseException) -> None:
        """End :meth:`listen` with ``error`` (after what is already buffered)."""
        if self._failure is None:
            self._failure = error
            self._buffer.put_nowait(None)

    async def _on_reopen(self, channel: Any, *_: Any) -> None:
        """aio-pika reopened a robust channel (after a reconnect) and declared its queues
        again: consume them again. The old channel's deliveries are requeued by the broker."""
        if self._closed:
            return
        self._consumer_tags = [t for t in self._consumer_tags if t[0].channel is not channel]
        for queue in self.queues:
            if queue.channel is not channel:
                continue
            try:
                await self._subscribe(queue)
            except Exception as exc:
                self._fail(
                    SubscriptionLostError(
                        f"could not consume queue {queue.name!r} again after a reconnect "
                        f"({type(exc).__name__}: {exc}); restart the service to resume it"
                    )
                )

    async def _deliver(self, delivered: DeliveredMessage) -> None:
        if self._closed:
            await self._hand_back(delivered)
            return
        self._buffer.put_nowait(delivered)

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        """Start consuming now (seed style the queues are already bound by their user), so the
        ``basic.consume`` round trip is done before :meth:`listen` and never cut short by it."""
        if not self._subscribed:
            await self._consume()

    async def listen(self) -> AsyncIterator[Message]:
        if not self._subscribed:
            await self._consume()
        buffer = self._buffer
        while True:
            if self._armed and buffer.empty():
                # About to wait for the broker, which may be waiting for our acks (prefetch).
                await self._flush()
            delivered = await buffer.get()
            if delivered is None:
                if self._failure is not None and not self._closed:
                    raise self._failure
                return
            if delivered.channel.is_closed:
                # Delivered on a channel that was lost since (a reconnect happened): RabbitMQ
                # has requeued it and will deliver it again on the new channel.
                continue
            self._in_flight += 1
            undecodable = _compat.undecodable(delivered.delivery) or _compat.undecodable(
                delivered.header
            )
            if undecodable:  # the listener dead-letters it (Message.undecodable)
                yield lenient_message(delivered, undecodable).message
                continue
            message = to_message(delivered, self._counted)
            if self._retry_queue is not None and _expired_into(delivered, self._retry_queue):
                message = _retried(message)
            yield message

    async def ack(self, message: Message) -> None:
        self._in_flight -= 1
        delivered: DeliveredMessage = message.extra
        channel = delivered.channel
        if channel.is_closed:
            # Its delivery tag died with the channel; RabbitMQ redelivers the message.
            logger.debug("not acking a delivery of closed channel %r", channel)
            return
        acks = self._acks.get(channel) or self._track(channel)
        acks.settle(delivered.delivery_tag or 0)
        if acks.unsent >= self._ack_batch:
            async with self._send_lock:
                await self._send(channel, acks, stragglers=False, force=False)
        elif self._in_flight <= 0 and self._buffer.empty():
            await self._flush()  # idle: nothing to batch with, so no reason to wait
        if not self._armed and acks.pending:
            self._arm()

    async def nack(self, message: Message) -> None:
        self._in_flight -= 1
        await self._hand_back(message.extra)

    async def _hand_back(self, delivered: DeliveredMessage) -> None:
        """``basic.nack(requeue=True)`` at once, for this delivery only."""
        channel = delivered.channel
        if channel.is_closed:
            return  # the broker requeued it when the channel closed
        tag = delivered.delivery_tag or 0
        acks = self._acks.get(channel) or self._track(channel)
        async with self._send_lock:
            acks.settle(tag, sent=True)
            await channel.basic_nack(tag, multiple=False, requeue=True)

    def _track(self, channel: AbstractChannel) -> ChannelAcks:
        # A new channel (first delivery, or a reconnect): forget the ones that closed, their
        # tags are void and the broker redelivers their messages.
        for gone in [c for c in self._acks if c.is_closed]:
            del self._acks[gone]
        acks = self._acks[channel] = ChannelAcks()
        return acks

    def _arm(self) -> None:
        self._armed = True
        self._timer = asyncio.get_running_loop().call_later(_ACK_DELAY, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._flusher = asyncio.get_running_loop().create_task(self._timed_flush())

    async def _timed_flush(self) -> None:
        try:
            await self._flush(stragglers=True)
        finally:
            self._armed = False
            if not self._closed and any(acks.pending for acks in self._acks.values()):
                self._arm()

    async def _flush(self, *, stragglers: bool = False, force: bool = False) -> None:
        async with self._send_lock:
            for channel, acks in list(self._acks.items()):
                await self._send(channel, acks, stragglers=stragglers, force=force)

    async def _send(
        self, channel: AbstractChannel, acks: ChannelAcks, *, stragglers: bool, force: bool
    ) -> None:
        """Send what ``acks`` has due (the send lock is held)."""
        if channel.is_closed:
            self._acks.pop(channel, None)
            return
        due = acks.take_due()
        lone = acks.take_stragglers(force=force) if stragglers else []
        try:
            if due is not None:
                await channel.basic_ack(due, multiple=True)
            for tag in lone:
                await channel.basic_ack(tag)
        except aiormq.exceptions.ChannelInvalidStateError as exc:
            # The channel went away meanwhile: the broker redelivers what it still holds.
            logger.debug("could not send acks on %r: %s", channel, exc)
            self._acks.pop(channel, None)
        except Exception as exc:
            logger.warning(
                "could not send acks on %r (%s: %s); RabbitMQ will redeliver those messages",
                channel,
                type(exc).__name__,
                exc,
            )
            self._acks.pop(channel, None)

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        if self._dead_letters is None:
            return False
        await self._dead_letters.put(message, failure, self.dead_letter_group)
        return True

    async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool:
        """Store ``message`` in the group's fallback queue ``dispytch.dlq-fallback.<group>``."""
        if self._dead_letters is None:
            return False
        await self._dead_letters.put_fallback(message, failure, self.dead_letter_group)
        return True

    async def close(self) -> None:
        """Cancel the subscriptions and hand buffered, never-listened messages back."""
        if self._closed:
            return
        self._closed = True
        for channel in self._watched:
            channel.reopen_callbacks.discard(self._on_reopen)
        self._watched.clear()
        for task in list(self._recoveries):
            task.cancel()
        await asyncio.gather(*self._recoveries, return_exceptions=True)
        for _queue, amqp, tag in self._consumer_tags:
            if amqp.is_closed:
                continue  # nothing to cancel
            try:
                await asyncio.wait_for(amqp.basic_cancel(tag), _CANCEL_TIMEOUT)
            except Exception as exc:  # the channel went away meanwhile: nothing to cancel
                logger.debug("could not cancel consumer %s: %s", tag, exc)
        self._consumer_tags.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        while not self._buffer.empty():
            delivered = self._buffer.get_nowait()
            if delivered is None:
                continue
            try:
                await self._hand_back(delivered)
            except Exception as exc:  # channel gone: the broker requeued it already
                logger.debug("could not hand back a buffered message: %s", exc)
        # Every handed-out message is settled by now (the listener drains before closing).
        await self._flush(stragglers=True, force=True)
        self._acks.clear()
        self._armed = False
        self._buffer.put_nowait(None)

    async def lag(self) -> dict[str, int]:
        """Messages ready in each consumed queue (RabbitMQ's queue depth)."""
        return await queue_depths(self.queues)


class RabbitMQGroupConsumer(RabbitMQConsumer):
    """The consumer of one group, built by :class:`~dispytch.rabbitmq.RabbitMQBackend`.

    On :meth:`start` it opens its own robust connection (RabbitMQ advises separate connections
    for publishing and consuming, so publisher flow control never stalls deliveries), declares
    the group's durable queue, binds it to the topic exchange for every subscription and sets
    the channel's prefetch.

    **Broker-delayed retries** go to a delay queue per delay (``dispytch.retry.<ms>ms.<queue>``,
    the delay rounded to two significant digits): a durable classic queue with that TTL whose
    expired messages RabbitMQ dead-letters into the group's queue through the default exchange.
    Only a message that arrives that way (default exchange, routing key = the group's queue) is
    read as a retry; a publisher's ``x-dispytch-retry-*`` headers on a topic are not.
    """

    supports_broker_retries = True

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
        self._ack_batch = max(1, min(_ACK_BATCH, prefetch // 2))
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

    def use_broker_retries(self, delays: Sequence[float] = ()) -> None:
        self._retry_queue = self.queue_name

    async def retry_later(self, message: Message, retries: Sequence[RetryLater]) -> None:
        """Publish a copy per retry to its delay queue (confirmed), then ack."""
        store = self._dead_letters
        if store is None:  # pragma: no cover - the backend always gives one
            raise ConfigurationError("broker retries need the backend's dead-letter store")
        now = time.time()
        for retry in retries:
            delay = tier_ms(retry.delay)
            headers = retry_headers(message, retry, int(now * 1000) + delay)
            await store.put_delayed(self.queue_name, delay, message.payload, message.key, headers)
        await self.ack(message)

    async def close(self) -> None:
        await super().close()
        if self.connection is not None:
            await self.connection.close()


#: Headers RabbitMQ adds when it dead-letters (a delayed retry expiring into its queue).
_DEATH_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)


def _expired_into(delivered: DeliveredMessage, queue: str) -> bool:
    """Whether ``delivered`` came through the default exchange to ``queue`` (how an expired
    delayed retry arrives; a topic's messages come through the topic exchange)."""
    delivery = delivered.delivery
    return (
        getattr(delivery, "exchange", None) == ""
        and getattr(delivery, "routing_key", None) == queue
    )


def _retried(message: Message) -> Message:
    out = retried_message(message)
    if out is not message and any(name in out.headers for name in _DEATH_HEADERS):
        out.headers = {k: v for k, v in out.headers.items() if k not in _DEATH_HEADERS}
    return out


def _is_quorum(queue: AbstractQueue) -> bool:
    arguments = getattr(queue, "arguments", None) or {}
    return bool(arguments.get("x-queue-type") == "quorum")
