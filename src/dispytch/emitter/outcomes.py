"""The outcomes of one batched send: a slot per message, one future for them all.

A producer's ``send_many`` that gave each message a future (and gathered them) would pay a
callback and an event-loop turn per message when the broker's confirms come in, and keep a few
objects per message alive for the cyclic GC to walk. A batch registers its messages here as they
are written, the confirms settle their slots, and the caller waits on one future.
"""

from __future__ import annotations

import asyncio

__all__ = ["Outcomes", "wake"]


class Outcomes:
    """``results[i]`` is ``None`` (confirmed) or the error of message ``i``.

    :meth:`expect` counts a message whose confirm is awaited; :meth:`settle` records it. The
    future completes once :meth:`seal` said no more messages come and every expected one was
    settled (confirms can arrive while later messages are still being written).
    """

    __slots__ = ("future", "results", "sealed", "waiting")

    def __init__(self, future: asyncio.Future[None], size: int) -> None:
        self.future = future
        self.results: list[BaseException | None] = [None] * size
        self.waiting = 0
        self.sealed = False

    def expect(self) -> None:
        self.waiting += 1

    def settle(self, index: int, error: BaseException | None) -> None:
        self.results[index] = error
        self.waiting -= 1
        if not self.waiting and self.sealed and not self.future.done():
            self.future.set_result(None)

    def seal(self) -> None:
        self.sealed = True
        if not self.waiting and not self.future.done():
            self.future.set_result(None)


def wake(waiters: list[asyncio.Future[None]]) -> None:
    """Set every waiter that is not done yet (a producer's ``close`` waiting for sends in
    progress), and forget them."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()
