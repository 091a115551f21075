"""Which Kafka offset may be committed: the contiguous settled prefix of each partition. Pure.

The listener settles records out of order (messages with different keys run concurrently), but a
Kafka commit is one number per partition meaning "everything before this is done". So the commit
position of a partition is the offset after the longest run of settled records, counted from the
oldest record handed out: it never passes a record that is still being handled, or one that was
handed back (nacked).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["OffsetTracker", "PartitionOffsets"]

K = TypeVar("K", bound=Hashable)


class PartitionOffsets:
    """The records of one partition handed out and not yet part of the committable prefix."""

    __slots__ = ("_abandoned", "_committed", "_done", "_next", "_order", "_pending")

    def __init__(self) -> None:
        self._order: deque[int] = deque()  # offsets handed out, oldest first
        self._pending: set[int] = set()  # handed out, not settled
        self._done: set[int] = set()  # settled, but an older record is still pending
        self._abandoned: set[int] = set()  # pending, but handed back: nobody is working on it
        self._next: int | None = None  # commit position: offset after the settled prefix
        self._committed: int | None = None

    def track(self, offset: int) -> None:
        """A record was handed to the listener (offsets arrive in increasing order)."""
        self._order.append(offset)
        self._pending.add(offset)

    def settle(self, offset: int) -> bool:
        """The record is done. Returns whether the commit position moved.

        Offsets this tracker does not know (settled twice, or handed out before a rewind) are
        ignored: an ack only ever means the record's work was done, so ignoring it is safe.
        """
        if offset not in self._pending:
            return False
        self._pending.discard(offset)
        self._abandoned.discard(offset)
        self._done.add(offset)
        order, done = self._order, self._done
        moved = False
        while order and order[0] in done:
            first = order.popleft()
            done.discard(first)
            self._next = first + 1
            moved = True
        return moved

    def abandon(self, offset: int) -> None:
        """The record was handed back unhandled: it stays uncommitted, nobody waits for it."""
        if offset in self._pending:
            self._abandoned.add(offset)

    def rewind(self) -> int | None:
        """Forget every handed-out record and return the offset to re-read from.

        That is the oldest unsettled record (``None`` when nothing is unsettled). The commit
        position stays where it was, just before that record.
        """
        restart = self._order[0] if self._order else None
        if restart is not None:
            self._next = restart  # everything before it is settled (or does not exist)
        self._order.clear()
        self._pending.clear()
        self._done.clear()
        self._abandoned.clear()
        return restart

    @property
    def lowest_unsettled(self) -> int | None:
        return self._order[0] if self._order else None

    @property
    def position(self) -> int | None:
        """Where a commit may point now (the oldest unsettled record, or the offset after the
        settled prefix), ``None`` before any record was tracked."""
        return self._order[0] if self._order else self._next

    @property
    def in_flight(self) -> int:
        """Records being handled right now (pending and not handed back)."""
        return len(self._pending) - len(self._abandoned)

    @property
    def due(self) -> int | None:
        """The commit position if it moved since the last commit, else ``None``."""
        if self._next is None or self._next == self._committed:
            return None
        return self._next

    def committed(self, offset: int) -> None:
        self._committed = offset


class OffsetTracker(Generic[K]):
    """:class:`PartitionOffsets` for every partition (``K`` is e.g. a ``TopicPartition``)."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: dict[K, PartitionOffsets] = {}

    def track(self, partition: K, offset: int) -> None:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = PartitionOffsets()
        part.track(offset)

    def settle(self, partition: K, offset: int) -> bool:
        """Mark a record done; returns whether the partition's commit position moved."""
        part = self._parts.get(partition)
        return part is not None and part.settle(offset)

    def abandon(self, partition: K, offset: int) -> None:
        part = self._parts.get(partition)
        if part is not None:
            part.abandon(offset)

    def rewind(self, partition: K) -> int | None:
        """See :meth:`PartitionOffsets.rewind`."""
        part = self._parts.get(partition)
        return None if part is None else part.rewind()

    def lowest_unsettled(self, partition: K) -> int | None:
        part = self._parts.get(partition)
        return None if part is None else part.lowest_unsettled

    def position(self, partition: K) -> int | None:
        """See :attr:`PartitionOffsets.position`."""
        part = self._parts.get(partition)
        return None if part is None else part.position

    def in_flight(self, partitions: Iterable[K] | None = None) -> int:
        keys = self._parts.keys() if partitions is None else partitions
        return sum(p.in_flight for k in keys if (p := self._parts.get(k)) is not None)

    def due(self, partitions: Iterable[K] | None = None) -> dict[K, int]:
        """Commit positions that moved since the last :meth:`committed`."""
        keys = self._parts.keys() if partitions is None else partitions
        out: dict[K, int] = {}
        for key in keys:
            part = self._parts.get(key)
            if part is not None and (position := part.due) is not None:
                out[key] = position
        return out

    def committed(self, offsets: dict[K, int]) -> None:
        """The broker stored these commit positions."""
        for key, offset in offsets.items():
            part = self._parts.get(key)
            if part is not None:
                part.committed(offset)

    def forget(self, partitions: Iterable[K]) -> None:
        """The partitions were revoked: a later owner starts from the broker's committed offset."""
        for key in partitions:
            self._parts.pop(key, None)
