"""Reading a consumer slowly while measuring what it holds: the byte-bound tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispytch.listener.consumer import Message

#: The size of the large messages those tests publish (as in the report of the problem).
BIG = 900 * 1024


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@dataclass
class Peaks:
    got: int = 0
    held: int = 0  #: the most bytes ``measure`` reported
    rss_growth: int = 0  #: the most this process's RSS grew while reading


async def read_slowly(
    consumer: Any,
    measure: Callable[[Message], int],
    done: Callable[[int], bool],
    *,
    ack: bool = False,
    pause: float = 0.02,
    idle: float | None = None,
    timeout: float = 60.0,
) -> Peaks:
    """Take messages from ``consumer.listen()`` like a handler needing ``pause`` seconds each,
    until ``done(count)``; ``idle`` seconds without a message re-check ``done``."""
    peaks = Peaks()
    before = rss()
    stream = consumer.listen()
    # The next message is awaited in a task of its own: cancelling an anext() would end the
    # consumer's generator.
    pending: asyncio.Future[Message] | None = None
    try:
        async with asyncio.timeout(timeout):
            while not done(peaks.got):
                if pending is None:
                    pending = asyncio.ensure_future(anext(stream))
                finished, _ = await asyncio.wait({pending}, timeout=idle)
                if not finished:
                    continue
                message, pending = pending.result(), None
                peaks.held = max(peaks.held, measure(message))
                peaks.rss_growth = max(peaks.rss_growth, rss() - before)
                peaks.got += 1
                await asyncio.sleep(pause)
                if ack:
                    await consumer.ack(message)
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await stream.aclose()
    return peaks
