"""Which deliveries of one AMQP channel one ``basic.ack(multiple=True)`` may settle. Pure.

The listener settles messages out of order (different keys run concurrently), but one
``basic.ack(T, multiple=True)`` settles every delivery of the channel up to ``T``. So the
batched ack only ever covers the contiguous settled prefix: the tags ``1..T`` that are all
settled, by an ack still to send or a settlement already sent (a ``basic.nack``, which must go
out at once, or an individual ack).

RabbitMQ numbers the deliveries of a channel 1, 2, 3... A tag this tracker never heard of
(still in flight, or delivered to another consumer sharing the channel) stops the prefix, so a
multiple ack never settles a delivery that is not ours or not done. When the prefix stays stuck,
:meth:`ChannelAcks.take_stragglers` gives the settled tags above it to ack one by one, so that
a slow message never keeps the broker's prefetch window full of finished ones.
"""

from __future__ import annotations

__all__ = ["ChannelAcks"]


class ChannelAcks:
    """The settled delivery tags of one channel whose ``basic.ack`` was not sent yet."""

    __slots__ = ("_checkpoint", "_due", "_prefix", "_sent", "_unsent", "_waiting")

    def __init__(self) -> None:
        self._prefix = 0  # every tag <= this is settled
        self._due: int | None = None  # highest tag of the prefix whose ack is not sent
        self._unsent = 0  # tags of the prefix whose ack is not sent (all <= _due)
        self._waiting: set[int] = set()  # settled above the prefix, ack not sent
        self._sent: set[int] = set()  # settled above the prefix, settlement already sent
        self._checkpoint = -1  # the prefix at the previous take_stragglers()

    def settle(self, tag: int, *, sent: bool = False) -> None:
        """The delivery ``tag`` is done; ``sent`` when its settlement already went out (or goes
        out now, individually). A tag settled before is ignored: it is settled either way."""
        if tag <= self._prefix or tag in self._waiting or tag in self._sent:
            return
        (self._sent if sent else self._waiting).add(tag)
        waiting, done = self._waiting, self._sent
        prefix = self._prefix
        while True:
            nxt = prefix + 1
            if nxt in waiting:
                waiting.discard(nxt)
                self._due = nxt
                self._unsent += 1
            elif nxt in done:
                done.discard(nxt)
            else:
                break
            prefix = nxt
        self._prefix = prefix

    @property
    def due(self) -> int | None:
        """The tag for ``basic.ack(multiple=True)``: the prefix's highest unsent tag, if any."""
        return self._due

    @property
    def unsent(self) -> int:
        """How many tags :attr:`due` would settle."""
        return self._unsent

    @property
    def pending(self) -> int:
        """Settled tags whose ack was not sent yet (in the prefix or above it)."""
        return self._unsent + len(self._waiting)

    def take_due(self) -> int | None:
        """:attr:`due`, now counted as sent (the caller sends it before anything else)."""
        due = self._due
        self._due = None
        self._unsent = 0
        return due

    def take_stragglers(self, *, force: bool = False) -> list[int]:
        """Settled tags above the prefix to ack one by one, in order, now counted as sent.

        Only when the prefix did not move since the previous call (or ``force``, on close):
        a prefix that moves will soon cover them with one ack.
        """
        stuck = self._prefix == self._checkpoint
        self._checkpoint = self._prefix
        if not self._waiting or not (stuck or force):
            return []
        tags = sorted(self._waiting)
        self._waiting.clear()
        self._sent.update(tags)
        return tags
