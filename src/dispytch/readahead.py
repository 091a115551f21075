"""The read-ahead buffer of a consumer whose broker pushes messages (Redis Pub/Sub, core NATS).

Such a broker sends as fast as it can and keeps nothing for a slow client, so the consumer reads
into a buffer ahead of its handlers. :class:`ReadAhead` bounds that buffer in messages and in
payload bytes (DESIGN §4.12), wakes :meth:`~dispytch.seam.Consumer.listen` when something
arrives and the reader when room frees up. What a full buffer means is the backend's choice:
Redis Pub/Sub drops (a reader that stopped would make Redis cut the connection), core NATS
waits (nats-py's own bounded queue then fills and drops).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["ReadAhead"]

T = TypeVar("T")


class ReadAhead(Generic[T]):
    """Up to ``capacity`` items and ``max_bytes`` payload bytes, oldest first.

    The reader :meth:`offer`\\ s (a pushing broker that must not be held up drops what does not
    fit) or waits :meth:`for_room` then :meth:`put`\\ s, and calls :meth:`wake`; ``listen``
    :meth:`take`\\ s until ``None``, then waits :meth:`readable`.
    """

    __slots__ = (
        "_items",
        "_readable",
        "_reader_waits",
        "_room",
        "_sizes",
        "capacity",
        "closed",
        "held_bytes",
        "max_bytes",
    )

    def __init__(self, capacity: int, max_bytes: int) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._items: deque[T] = deque()
        self._sizes: deque[int] = deque()
        #: Payload bytes held now.
        self.held_bytes = 0
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._reader_waits = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        """No room for one more item (by count or by bytes)."""
        return len(self._items) >= self.capacity or self.held_bytes >= self.max_bytes

    def put(self, item: T, size: int) -> None:
        """Hold ``item`` (``size`` payload bytes). The caller checked there is room."""
        self._items.append(item)
        self._sizes.append(size)
        self.held_bytes += size

    def offer(self, item: T, size: int) -> bool:
        """Hold ``item`` if there is room; ``False`` (not held) when the buffer is full."""
        items = self._items
        if len(items) >= self.capacity or self.held_bytes >= self.max_bytes:
            return False
        items.append(item)
        self._sizes.append(size)
        self.held_bytes += size
        return True

    def wake(self) -> None:
        """Tell ``listen`` there is something to take (or that the reader ended)."""
        self._readable.set()

    def take(self) -> T | None:
        """The oldest item, or ``None`` when there is none."""
        items = self._items
        if not items:
            return None
        self.held_bytes -= self._sizes.popleft()
        if self._reader_waits:
            self._reader_waits = False
            self._room.set()
        return items.popleft()

    async def readable(self) -> None:
        """Wait until :meth:`wake` is called (call after :meth:`take` returned ``None``)."""
        self._readable.clear()
        await self._readable.wait()

    async def for_room(self) -> None:
        """Wait until there is room for one more item, or the buffer is closed."""
        while self.full and not self.closed:
            self._room.clear()
            self._reader_waits = True
            await self._room.wait()

    def clear(self) -> int:
        """Drop everything held; return how many items that was."""
        dropped = len(self._items)
        self._items.clear()
        self._sizes.clear()
        self.held_bytes = 0
        self._reader_waits = False
        self._room.set()
        return dropped

    def close(self) -> int:
        """Drop everything held and wake both sides for good; return how many were dropped."""
        self.closed = True
        dropped = self.clear()
        self._readable.set()
        return dropped
