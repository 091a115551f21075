"""Shutdown escalation: after ``shutdown_timeout`` in-flight work is cancelled; work that ignores
the cancellation gets ``shutdown_grace`` seconds, then is abandoned, never acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from dispytch import Event, EventListener, HandlerGroup
from dispytch.errors import ShutdownError
from dispytch.memory import MemoryBroker
from tests.helpers import wait_until
from tests.unit.support import GROUP, RecordingConsumer, envelope

Body = dict[str, Any]


def stubborn_group(started: asyncio.Event, release: asyncio.Event) -> HandlerGroup:
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def ignores_cancellation(event: Event[Body]) -> None:
        started.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # the bug this protects against
                await release.wait()

    return group


async def test_work_ignoring_cancellation_is_abandoned_after_the_grace_and_never_acked() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer, shutdown_timeout=0.2, shutdown_grace=0.3)
    listener.add_handler_group(stubborn_group(started, release))
    task = asyncio.create_task(listener.listen())
    broker.publish("orders", envelope("placed", {"n": 1}), key=b"k")
    broker.publish("orders", envelope("placed", {"n": 2}), key=b"k")  # queued behind it
    await asyncio.wait_for(started.wait(), 5)
    began = time.monotonic()
    listener.stop()
    with pytest.raises(ShutdownError, match="1 handler task"):
        await asyncio.wait_for(task, 5)
    assert time.monotonic() - began < 0.2 + 0.3 + 1.0
    assert consumer.acked == []
    assert consumer.listen_closed
    assert broker.pending(GROUP) == 2  # both go to the next consumer of the group
    # The abandoned handler finishing later acknowledges nothing either.
    release.set()
    await asyncio.sleep(0.05)
    assert consumer.acked == []


async def test_work_that_swallows_the_cancellation_and_returns_is_handed_back() -> None:
    finished = asyncio.Event()
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def finishes_anyway(event: Event[Body]) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            finished.set()  # returns normally: must not count as handled

    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer, shutdown_timeout=0.05, shutdown_grace=2)
    listener.add_handler_group(group)
    await listener.subscribe()
    broker.publish("orders", envelope("placed", {}))
    task = asyncio.create_task(listener.listen())
    await wait_until(lambda: listener.in_flight == 1, timeout=5, what="the handler to start")
    listener.stop()
    await asyncio.wait_for(task, 5)
    assert finished.is_set()
    assert consumer.acked == []
    assert consumer.log == [("nack", 0)]


async def test_a_second_stop_request_stops_waiting_for_in_flight_work() -> None:
    started = asyncio.Event()
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def slow(event: Event[Body]) -> None:
        started.set()
        await asyncio.sleep(30)

    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer, shutdown_timeout=30, shutdown_grace=0.5)
    listener.add_handler_group(group)
    task = asyncio.create_task(listener.listen())
    broker.publish("orders", envelope("placed", {}))
    await asyncio.wait_for(started.wait(), 5)
    listener.stop()  # first request: drain, up to 30 s
    await asyncio.sleep(0.05)
    assert not task.done()
    began = time.monotonic()
    task.cancel()  # second request (what a second SIGTERM does)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert time.monotonic() - began < 2
    assert consumer.log == [("nack", 0)]
    assert consumer.listen_closed
    assert broker.pending(GROUP) == 1


async def test_cancelled_while_stubborn_work_runs_still_ends_within_the_grace() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer, shutdown_timeout=30, shutdown_grace=0.3)
    listener.add_handler_group(stubborn_group(started, release))
    task = asyncio.create_task(listener.listen())
    broker.publish("orders", envelope("placed", {}))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()  # no graceful stop at all: cancel, grace, abandon
    began = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert time.monotonic() - began < 0.3 + 1.0
    assert consumer.acked == []
    release.set()


async def test_no_grace_still_lets_cancelled_work_end_cleanly() -> None:
    started = asyncio.Event()
    cleaned: list[str] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def polite(event: Event[Body]) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.01)  # async clean-up after the cancellation
            cleaned.append("closed")

    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer, shutdown_timeout=0, shutdown_grace=0)
    listener.add_handler_group(group)
    task = asyncio.create_task(listener.listen())
    broker.publish("orders", envelope("placed", {}))
    await asyncio.wait_for(started.wait(), 5)
    listener.stop()
    await asyncio.wait_for(task, 5)  # no ShutdownError: it did end when cancelled
    assert cleaned == ["closed"]
    assert consumer.log == [("nack", 0)]
