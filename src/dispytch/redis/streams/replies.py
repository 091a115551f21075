"""The reply inbox of an app on Redis Streams: a stream key of its own, read without a group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis

from dispytch.backoff import Backoff
from dispytch.redis.connection import (
    CONNECTION_ERRORS,
    FIRST_RECONNECT_DELAY,
    pause,
    stop_reader,
)
from dispytch.redis.fields import decode_fields
from dispytch.request import Deliver, ReplyInbox

__all__ = ["RedisStreamsInbox"]

logger = logging.getLogger("dispytch.redis")

#: Entries read per XREAD.
_BATCH = 256


class RedisStreamsInbox(ReplyInbox):
    """The stream ``address`` (``dispytch:reply:<random>``), read with ``XREAD`` from the start
    by this app alone; what was read is trimmed away. A reply's ``XADD`` also sets the stream's
    TTL (:data:`~dispytch.redis.streams.producer.REPLY_TTL_MS`), so the inbox of a requester
    that died expires; the inbox deletes the stream when it closes.

    Args:
        reader: a client of its own for the blocking reads (closed with the inbox).
        client: the backend's client, for trimming, waking the reader and deleting the stream.
        address: the stream key.
        poll_interval: seconds one ``XREAD`` blocks on the server.
    """

    def __init__(self, reader: Redis, client: Redis, address: str, poll_interval: float) -> None:
        self.reader = reader
        self.client = client
        self.address = address
        self.poll_ms = max(1, int(poll_interval * 1000))
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver) -> None:
        # The stream is new and read from its first entry: a reply sent from now on is read.
        self._task = asyncio.create_task(self._read(deliver), name="dispytch-replies")

    async def _read(self, deliver: Deliver) -> None:
        last = b"0-0"
        backoff = Backoff(FIRST_RECONNECT_DELAY, 10.0)
        while not self._closing.is_set():
            try:
                found: Any = await self.reader.xread(
                    {self.address: last},
                    count=_BATCH,
                    block=self.poll_ms,
                )
                for _stream, entries in found or ():
                    for entry_id, fields in entries:
                        last = entry_id
                        decoded = decode_fields(fields)
                        if decoded is not None and decoded[0]:  # not a wake-up entry
                            deliver(decoded[0], decoded[2])
                    # Entries before the last one read are of no use any more.
                    await self.client.xtrim(self.address, minid=last)
                backoff.succeeded()
            except CONNECTION_ERRORS as exc:
                delay = backoff.failed()
                logger.warning(
                    "reading replies from Redis failed (%s: %s); retrying in %.2fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await pause(self._closing, delay)

    async def _wake(self) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self.client.xadd(self.address, {b"wake": b""})

    async def close(self) -> None:
        self._closing.set()
        await stop_reader(self._task, self._wake, self.poll_ms / 1000 + 1.0)
        self._task = None
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self.client.delete(self.address)
        await self.reader.aclose()
