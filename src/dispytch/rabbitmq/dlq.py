"""RabbitMQ dead letters as a :class:`~dispytch.dlq.DeadLetterStore`.

A consumer group's dead letters are in its queue ``dispytch.dlq.<group>`` and its fallback
queue ``dispytch.dlq-fallback.<group>`` (see :mod:`dispytch.rabbitmq.dead_letters`), the
original topic in the ``x-dispytch-original-topic`` header; with topics named, the per-topic
queues ``<topic>.dlq`` earlier versions wrote are read too. AMQP cannot list queues, so the
store needs the group (the app's, or ``--group``).

Reading is ``basic.get`` without auto-ack on a channel of the store's own: what was read stays
unacknowledged (invisible to other readers) until the operation ends. Removing a dead letter
acknowledges it; the rest is handed back at the end with ``basic.nack(multiple, requeue)``,
which puts it back in its place in the (classic) queue. A process killed mid-way loses nothing:
the broker requeues every unacknowledged message when the connection drops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import aiormq
from aio_pika.abc import AbstractConnection
from aiormq.abc import DeliveredMessage

from dispytch.dead_letter import DEAD_LETTER_SUFFIX, DeadLetter, dead_letter_topic
from dispytch.dlq.store import DeadLetterStore, original_topic
from dispytch.emitter.producer import Producer
from dispytch.errors import ConfigurationError
from dispytch.rabbitmq.dead_letters import MAX_NAME_BYTES, dead_letter_queue, fallback_queue
from dispytch.rabbitmq.wire import KEY_HEADER, decode_key, str_headers

__all__ = ["RabbitMQDeadLetters"]

#: Seconds :meth:`RabbitMQDeadLetters.release` waits for requeued messages to come back once
#: their number stopped growing.
_REQUEUE_WAIT = 2.0


class RabbitMQDeadLetters(DeadLetterStore):
    """Dead letters of consumer group ``group`` on ``connection``."""

    removal = "acknowledged (basic.ack) in its dead-letter queue"

    def __init__(
        self, connection: AbstractConnection, producer: Producer | None, group: str | None
    ) -> None:
        super().__init__(producer, group)
        self.connection = connection
        #: open channels of the current operation: their queue and the delivery tags held
        self._channels: dict[Any, tuple[str, set[int]]] = {}

    def _queues(self, topics: frozenset[str]) -> list[tuple[str, str | None]]:
        """(queue, topic of every message in it or None: per message, from its header)."""
        if self.group is None:
            raise ConfigurationError(
                "RabbitMQ keeps dead letters in one queue per consumer group and AMQP cannot "
                "list queues: pass the group (--group billing, or the app: module:app)"
            )
        queues: list[tuple[str, str | None]] = [
            (dead_letter_queue(self.group), None),
            (fallback_queue(self.group), None),
        ]
        queues += [(dead_letter_topic(t), t) for t in sorted(topics)]
        return [(q, t) for q, t in queues if len(q.encode()) <= MAX_NAME_BYTES]

    async def scan(self, topics: frozenset[str] = frozenset()) -> AsyncGenerator[DeadLetter, None]:
        transport = self.connection.transport
        if transport is None:
            raise ConfigurationError("not connected to RabbitMQ; call backend.connect() first")
        for queue, fixed_topic in self._queues(topics):
            # A plain aiormq channel: a robust one would reopen itself after the broker closes
            # it, which a passive declare of a missing queue does (404).
            channel = await transport.connection.channel()
            held: set[int] = set()
            self._channels[channel] = (queue, held)
            try:
                declared = await channel.queue_declare(queue, passive=True)
            except (aiormq.exceptions.ChannelNotFoundEntity, ValueError):
                continue  # no such queue: no dead letters there
            for _ in range(declared.message_count or 0):
                got: DeliveredMessage = await channel.basic_get(queue, no_ack=False)
                if not isinstance(got.delivery, aiormq.spec.Basic.GetOk):
                    break
                tag = got.delivery.delivery_tag or 0
                held.add(tag)
                raw = got.header.properties.headers or {}
                headers = str_headers(raw)
                topic = fixed_topic or original_topic(headers)
                if topics and topic not in topics:
                    continue
                yield DeadLetter(
                    topic,
                    got.body,
                    headers,
                    decode_key(raw.get(KEY_HEADER)),
                    queue if fixed_topic is None else topic + DEAD_LETTER_SUFFIX,
                    str(tag),
                    (channel, tag),
                )

    async def remove(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            channel, tag = letter.handle
            await channel.basic_ack(tag)
            held = self._channels.get(channel)
            if held is not None:
                held[1].discard(tag)

    async def release(self) -> None:
        channels, self._channels = self._channels, {}
        for channel, (queue, held) in channels.items():
            try:
                if held and not channel.is_closed:
                    # Everything still held, back in place (acked ones are not affected).
                    await channel.basic_nack(max(held), multiple=True, requeue=True)
                    await _requeued(channel, queue, len(held))
            finally:
                if not channel.is_closed:
                    await channel.close()


async def _requeued(channel: Any, queue: str, count: int) -> None:
    """Wait until ``queue`` holds at least ``count`` ready messages again, as long as their
    number keeps growing (and at most :data:`_REQUEUE_WAIT` s after it stopped). RabbitMQ puts
    requeued messages back asynchronously, even after later commands on the same channel were
    answered; an operation right after this one (a replay after a count) must see them all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _REQUEUE_WAIT
    last = -1
    while True:
        declared = await channel.queue_declare(queue, passive=True)
        ready = declared.message_count or 0
        if ready >= count:
            return
        if ready > last:
            last = ready
            deadline = loop.time() + _REQUEUE_WAIT
        elif loop.time() > deadline:
            return  # no longer growing: someone else is taking them
        await asyncio.sleep(0.01)
