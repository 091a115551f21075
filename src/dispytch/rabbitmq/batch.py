"""Confirmed publishing of a whole batch in few writes, with one confirm future per message.

aiormq's ``basic_publish`` takes the channel lock, marshals and writes three frames and waits
for its confirm once per call, so a thousand concurrent calls cost a thousand lock hand-offs
and writes. Here a batch takes the lock once, numbers its messages like ``basic_publish`` does
(the channel's delivery tags, one confirm future each, the ``message_id`` aiormq maps a
``basic.return`` back by), marshals them with :mod:`dispytch.rabbitmq.frames` and writes the
frames of every 100 messages at once; RabbitMQ then confirms them like any other publishes.

This uses the channel's bookkeeping attributes, so :func:`supports` checks them first; a
channel without them (another aiormq) publishes message by message instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import aiormq
from aiormq.abc import AbstractChannel, ChannelFrame
from pamqp.commands import Basic

from dispytch.rabbitmq.frames import publish_frames

__all__ = ["Publish", "publish_batch", "supports"]

#: Messages per write: the first ones reach the broker while the rest are still marshalled.
_WRITE_EVERY = 100

_ATTRIBUTES = (
    "lock",
    "delivery_tag",
    "confirmations",
    "message_id_delivery_tag",
    "write_queue",
    "max_content_size",
    "number",
    "publisher_confirms",
    "create_future",
)


class Publish(NamedTuple):
    """One message of a batch: persistent with ``headers``, or with these ``properties``."""

    routing_key: str
    body: bytes
    headers: dict[str, Any] | None = None
    properties: Basic.Properties | None = None


def supports(channel: AbstractChannel) -> bool:
    """Whether ``channel`` has the bookkeeping :func:`publish_batch` relies on, with confirms."""
    return all(hasattr(channel, name) for name in _ATTRIBUTES) and bool(
        getattr(channel, "publisher_confirms", False)
    )


async def publish_batch(
    channel: Any, exchange: str, messages: Sequence[Publish], timeout: float | None
) -> list[Any]:
    """Publish ``messages`` with ``mandatory``; one outcome per message.

    An outcome is the broker's ``basic.ack`` frame, a returned message (unroutable), or the
    exception that ended its wait (``basic.nack``, a lost channel, ``TimeoutError``) or kept it
    from being sent (a routing key or header AMQP cannot carry).
    """
    outcomes: list[Any] = [None] * len(messages)
    waiting: dict[int, asyncio.Future[Any]] = {}
    ids: list[str] = []
    parts: list[bytes] = []
    number, max_body = channel.number, channel.max_content_size
    async with channel.lock:
        for n, message in enumerate(messages, 1):
            if channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("the channel is closed")
            properties = message.properties
            message_id = properties.message_id if properties is not None else None
            # aiormq matches a basic.return to its publish by message_id.
            message_id = message_id or os.urandom(16).hex()
            if properties is not None:
                properties.message_id = message_id
            try:
                parts.append(
                    publish_frames(
                        number,
                        exchange,
                        message.routing_key,
                        message.body,
                        max_body,
                        message_id=message_id,
                        headers=message.headers,
                        properties=properties,
                    )
                )
            except Exception as exc:  # never sent: this message fails, the others go on
                outcomes[n - 1] = exc
            else:
                channel.delivery_tag += 1
                confirmation: asyncio.Future[Any] = channel.create_future()
                channel.confirmations[channel.delivery_tag] = confirmation
                channel.message_id_delivery_tag[message_id] = channel.delivery_tag
                waiting[n - 1] = confirmation
                ids.append(message_id)
            if parts and (n % _WRITE_EVERY == 0 or n == len(messages)):
                await channel.write_queue.put(ChannelFrame(b"".join(parts), should_close=False))
                parts = []
                # Let the connection write this part while the next one is marshalled, so the
                # broker starts storing the batch before all of it is encoded.
                await asyncio.sleep(0)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*waiting.values(), return_exceptions=True), timeout
        )
    except TimeoutError:
        results = [
            (f.exception() or f.result()) if f.done() and not f.cancelled() else TimeoutError()
            for f in waiting.values()
        ]
    finally:
        for message_id in ids:
            channel.message_id_delivery_tag.pop(message_id, None)
    for index, result in zip(waiting, results, strict=True):
        outcomes[index] = result
    return outcomes
