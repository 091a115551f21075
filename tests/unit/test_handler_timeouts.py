"""Handler timeouts: a handler attempt that runs too long fails like any other failure."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dispytch import App, Event, EventBase, HandlerGroup, RegistrationError
from dispytch.errors import HandlerTimeout
from dispytch.testing import TestClient
from tests.helpers import wait_until
from tests.unit.support import envelope, memory_listener, running

Body = dict[str, Any]


setup = memory_listener


async def test_timeout_is_retried_then_dead_lettered() -> None:
    attempts: list[int] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed", timeout=0.05, retries=1, retry_interval=0)
    async def slow(event: Event[Body]) -> None:
        attempts.append(1)
        await asyncio.sleep(30)

    broker, consumer, listener = setup(group)
    async with running(listener):
        broker.publish("orders", envelope("placed", {}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert len(attempts) == 2
    ((_, failure),) = consumer.dead
    assert (failure.reason, failure.error_type) == ("handler", "HandlerTimeout")
    assert failure.attempts == 2
    assert "did not finish within 0.05s" in failure.error_message
    assert isinstance(failure.error, HandlerTimeout) and isinstance(failure.error, TimeoutError)
    assert consumer.log == [("dead", 0), ("ack", 0)]


async def test_a_timeout_frees_the_key_for_the_next_message() -> None:
    got: list[int] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed", timeout=0.05)
    async def maybe_hang(event: Event[Body]) -> None:
        if event.body["n"] == 0:
            await asyncio.Event().wait()  # never returns by itself
        got.append(event.body["n"])

    broker, consumer, listener = setup(group)
    async with running(listener):
        for n in range(3):
            broker.publish("orders", envelope("placed", {"n": n}), key=b"same")
        await wait_until(lambda: consumer.settled == 3, timeout=5, what="all settled")
    assert got == [1, 2]
    assert [f.error_type for _, f in consumer.dead] == ["HandlerTimeout"]


async def test_a_handler_swallowing_the_cancellation_still_times_out() -> None:
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed", timeout=0.05)
    async def stubborn(event: Event[Body]) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return  # pretends it finished

    broker, consumer, listener = setup(group)
    async with running(listener):
        broker.publish("orders", envelope("placed", {}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert [f.error_type for _, f in consumer.dead] == ["HandlerTimeout"]


async def test_a_handlers_own_timeout_error_is_not_reported_as_ours() -> None:
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed", timeout=5)
    async def calls_out(event: Event[Body]) -> None:
        raise TimeoutError("the payment service timed out")

    broker, consumer, listener = setup(group)
    async with running(listener):
        broker.publish("orders", envelope("placed", {}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    ((_, failure),) = consumer.dead
    assert (failure.error_type, failure.error_message) == (
        "TimeoutError",
        "the payment service timed out",
    )


async def test_app_default_and_per_handler_override() -> None:
    class OrderPlaced(EventBase):
        __topic__ = "orders"
        __event_type__ = "placed"

    app = App("memory://", handler_timeout=0.05)
    done: list[str] = []

    @app.handler(topic="orders", event="placed")
    async def uses_default(event: Event[Body]) -> None:
        await asyncio.sleep(0.3)
        done.append("default")

    @app.handler(topic="orders", event="placed", timeout=2)
    async def own_limit(event: Event[Body]) -> None:
        await asyncio.sleep(0.3)
        done.append("own")

    async with TestClient(app) as client:
        await client.emit(OrderPlaced())
        await client.wait_idle()
        assert [d.handler for d in client.dead_letters] == [uses_default.__qualname__]
        assert client.dead_letters[0].error.startswith("HandlerTimeout: ")
    assert done == ["own"]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5", True])
def test_bad_timeouts_are_refused(bad: Any) -> None:
    group = HandlerGroup()
    with pytest.raises(RegistrationError, match="timeout must be a number of seconds > 0"):
        group.handler(topic="t", event="e", timeout=bad)
    with pytest.raises(RegistrationError, match="handler_timeout must be"):
        App("memory://", handler_timeout=bad)
