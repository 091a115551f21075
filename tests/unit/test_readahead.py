"""The read-ahead buffer shared by the consumers of pushing brokers (Redis Pub/Sub, core NATS)."""

from __future__ import annotations

import asyncio

from dispytch.readahead import ReadAhead
from tests.helpers import wait_until


def test_bounded_in_messages_and_in_bytes() -> None:
    ahead: ReadAhead[str] = ReadAhead(capacity=3, max_bytes=10)
    ahead.put("a", 4)
    ahead.put("b", 4)
    assert not ahead.full and (len(ahead), ahead.held_bytes) == (2, 8)
    ahead.put("c", 1)
    assert ahead.full  # three messages
    assert ahead.take() == "a" and not ahead.full and ahead.held_bytes == 5
    ahead.put("big", 5)
    assert ahead.full  # ten bytes
    assert [ahead.take(), ahead.take(), ahead.take(), ahead.take()] == ["b", "c", "big", None]
    assert ahead.held_bytes == 0


async def test_a_waiting_reader_gets_room_and_listen_gets_woken() -> None:
    ahead: ReadAhead[int] = ReadAhead(capacity=1, max_bytes=100)
    ahead.put(1, 1)
    waiting = asyncio.create_task(ahead.for_room())
    await asyncio.sleep(0)
    assert not waiting.done()
    listening = asyncio.create_task(ahead.readable())
    assert ahead.take() == 1
    await asyncio.wait_for(waiting, 1)
    ahead.put(2, 1)
    ahead.wake()
    await asyncio.wait_for(listening, 1)


async def test_close_drops_what_is_held_and_releases_both_sides() -> None:
    ahead: ReadAhead[int] = ReadAhead(capacity=1, max_bytes=100)
    ahead.put(1, 1)
    waiting = asyncio.create_task(ahead.for_room())
    listening = asyncio.create_task(ahead.readable())
    await asyncio.sleep(0)
    assert ahead.close() == 1
    await wait_until(lambda: waiting.done() and listening.done(), what="both sides released")
    assert ahead.take() is None and ahead.held_bytes == 0 and ahead.closed
