"""AMQP 0-9-1 frames byte by byte, for tests that play a hostile publisher: any bytes where
pamqp would only write UTF-8 (routing keys, header names, short-string properties) and any
64-bit timestamp; and a publisher that sends them to a live broker."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Any


def short(data: bytes) -> bytes:
    """An AMQP short string (one length byte)."""
    return bytes((len(data),)) + data


def frame(kind: int, payload: bytes, channel: int = 1) -> bytes:
    """One frame: 1 method, 2 content header, 3 body."""
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def content_header(
    body_size: int,
    *,
    headers: Sequence[tuple[bytes, bytes | int]] = (),
    message_id: bytes | None = None,
    timestamp: int | None = None,
    persistent: bool = False,
) -> bytes:
    """The payload of a content header frame: headers (long-string values; an ``int`` is a
    signed 64-bit one, as RabbitMQ writes ``x-delivery-count``), delivery mode, message id and
    timestamp, as given."""
    flags, props = 0, b""
    if headers:
        table = b"".join(short(k) + _field_value(v) for k, v in headers)
        flags |= 0x2000
        props += struct.pack(">I", len(table)) + table
    if persistent:
        flags |= 0x1000
        props += b"\x02"
    if message_id is not None:
        flags |= 0x0080
        props += short(message_id)
    if timestamp is not None:
        flags |= 0x0040
        props += struct.pack(">Q", timestamp)
    return struct.pack(">HHQH", 60, 0, body_size, flags) + props


def _field_value(value: bytes | int) -> bytes:
    if isinstance(value, int):
        return b"l" + struct.pack(">q", value)
    return b"S" + struct.pack(">I", len(value)) + value


#: RabbitMQ's default ``frame_max``; a larger body goes in several body frames.
FRAME_MAX = 131072


def publish_frames(
    channel: int, exchange: str, routing_key: bytes, body: bytes, **properties: Any
) -> bytes:
    """basic.publish + content header + body, byte by byte, with whatever bytes a hostile
    publisher chooses for the routing key, header names and values, message id and timestamp
    (``properties``: the keywords of :func:`content_header`)."""
    method = struct.pack(">HHH", 60, 40, 0) + short(exchange.encode()) + short(routing_key)
    header = content_header(len(body), persistent=True, **properties)
    room = FRAME_MAX - 8  # frame header and end byte
    bodies = b"".join(frame(3, body[at : at + room], channel) for at in range(0, len(body), room))
    return frame(1, method + b"\x00", channel) + frame(2, header, channel) + bodies


class RawPublisher:
    """Publishes raw frames on one aiormq connection, each confirmed by the broker:
    ``async with RawPublisher(url) as raw: await raw.publish(exchange, key, body, ...)``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Any = None
        self._channel: Any = None

    async def __aenter__(self) -> RawPublisher:
        import aiormq

        self._connection = await aiormq.connect(self.url)
        self._channel = await self._connection.channel()
        await self._channel.confirm_delivery()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._connection.close()

    async def publish(
        self, exchange: str, routing_key: bytes, body: bytes, **properties: Any
    ) -> None:
        """Publish and wait until the broker stored the message (its confirm)."""
        from aiormq.abc import ChannelFrame

        channel = self._channel
        frames = publish_frames(channel.number, exchange, routing_key, body, **properties)
        confirmed = channel.create_future()
        channel.confirmations[channel.delivery_tag + 1] = confirmed
        channel.delivery_tag += 1
        await channel.write_queue.put(ChannelFrame(frames, should_close=False))
        await asyncio.wait_for(confirmed, 10)


async def publish_raw(
    url: str, exchange: str, routing_key: bytes, body: bytes, **properties: Any
) -> None:
    """One raw publish on a connection of its own (see :class:`RawPublisher`)."""
    async with RawPublisher(url) as raw:
        await raw.publish(exchange, routing_key, body, **properties)
