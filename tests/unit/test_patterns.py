"""Dedup stores, handler outputs and replies: the parts that need no broker."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from dispytch import (
    App,
    ConfigurationError,
    Event,
    EventBase,
    HandlerGroup,
    RegistrationError,
    RequestTimeout,
)
from dispytch.dedup import DedupStore, MemoryDedup, dedup_key
from dispytch.memory import MemoryBroker
from dispytch.memory.backend import MemoryBackend
from dispytch.request import CORRELATION_HEADER, REPLY_TO_HEADER
from tests.helpers import wait_until
from tests.unit.support import envelope, memory_listener, running

# -- stores ------------------------------------------------------------------------------------


async def test_memory_dedup_forgets_the_least_recently_used() -> None:
    store = MemoryDedup(max_entries=2)
    await store.record("a")
    await store.record("b")
    assert await store.seen("a")  # a is now the most recently used
    await store.record("c")  # evicts b
    assert [await store.seen(k) for k in ("a", "b", "c")] == [True, False, True]
    assert len(store) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_memory_dedup_needs_a_positive_bound(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_entries"):
        MemoryDedup(max_entries=bad)


def test_dedup_key_hashes_long_ids() -> None:
    assert dedup_key("g:h:", "evt-1") == "g:h:evt-1"
    long = dedup_key("g:h:", "x" * 10_000)
    assert long.startswith("g:h:sha256:") and len(long) < 100
    assert long == dedup_key("g:h:", "x" * 10_000)


def test_dedup_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="DedupStore"):
        App("memory://", dedup=object())  # type: ignore[arg-type]
    group = HandlerGroup()
    with pytest.raises(RegistrationError, match="dedup"):
        group.handler(topic="t", event="e", dedup="yes")  # type: ignore[arg-type]


class _Down(DedupStore):
    def __init__(self) -> None:
        self.calls = 0

    async def seen(self, key: str) -> bool:
        self.calls += 1
        raise ConnectionError("store down")

    async def record(self, key: str) -> None:
        self.calls += 1
        raise ConnectionError("store down")


async def test_a_failing_store_never_blocks_an_event(caplog: pytest.LogCaptureFixture) -> None:
    """Lookup fails -> the handler runs; record fails -> logged; the message is acked. One
    warning for the outage, not one per message."""
    store = _Down()
    group = HandlerGroup()
    handled: list[str] = []

    @group.handler(topic="t", event="e")
    async def handle(event: Event[dict]) -> None:
        handled.append(event.id)

    _, consumer, listener = memory_listener(group, dedup=store)
    with caplog.at_level(logging.WARNING, logger="dispytch.listener"):
        async with running(listener):
            for i in range(3):
                consumer.broker.publish("t", envelope("e", {}, id_=f"evt-{i}"))
            await wait_until(lambda: len(consumer.acked) == 3, what="three acks")
    assert handled == ["evt-0", "evt-1", "evt-2"]
    assert store.calls == 6
    warnings = [r for r in caplog.records if "dedup store" in r.getMessage()]
    assert len(warnings) == 1


async def test_keys_are_scoped_by_group_and_handler_module() -> None:
    store = MemoryDedup()
    group = HandlerGroup()

    @group.handler(topic="t", event="e")
    async def handle(event: Event[dict]) -> None:
        pass

    _, consumer, listener = memory_listener(group, dedup=store, dedup_scope="billing")
    async with running(listener):
        consumer.broker.publish("t", envelope("e", {}, id_="evt-9"))
        await wait_until(lambda: len(consumer.acked) == 1, what="the ack")
    assert list(store._keys) == [f"billing:{__name__}.{handle.__qualname__}:evt-9"]


# -- outputs -----------------------------------------------------------------------------------


class Out(EventBase):
    __topic__ = "out"
    __event_type__ = "out"
    n: int


async def test_a_list_mixing_events_and_other_values_fails_the_handler() -> None:
    group = HandlerGroup()

    @group.handler(topic="t", event="e")
    async def handle(event: Event[dict]) -> list[Any]:
        return [Out(n=1), "not an event"]

    broker, consumer, listener = memory_listener(group)
    async with running(listener):
        broker.publish("t", envelope("e", {}))
        await wait_until(lambda: len(consumer.dead) == 1, what="the dead letter")
    failure = consumer.dead[0][1]
    assert failure.error_type == "TypeError" and "mixing events" in failure.error_message


async def test_other_return_values_are_ignored_and_events_need_a_producer() -> None:
    group = HandlerGroup()

    @group.handler(topic="t", event="plain")
    async def plain(event: Event[dict]) -> Any:
        return {"not": "an event"}

    @group.handler(topic="t", event="emits")
    async def emits(event: Event[dict]) -> EventBase:
        return Out(n=2)

    broker, consumer, listener = memory_listener(group)
    async with running(listener):
        broker.publish("t", envelope("plain", {}))
        broker.publish("t", envelope("emits", {}))
        await wait_until(lambda: len(consumer.acked) == 2, what="both settled")
    ((message, failure),) = consumer.dead  # the plain one was simply acked
    assert message.offset == 1 and "no producer" in failure.error_message


async def test_outputs_keep_an_id_the_handler_set() -> None:
    app = App(backend=MemoryBackend(broker=MemoryBroker()))
    got: list[str] = []

    @app.handler(topic="t", event="e")
    async def handle(event: Event[dict]) -> list[EventBase]:
        return [Out(n=1, id="mine"), Out(n=2)]

    @app.handler(topic="out", event="out")
    async def collect(event: Event[dict]) -> None:
        got.append(event.id)

    async with app:
        app.backend.broker.publish("t", envelope("e", {}))  # type: ignore[attr-defined]
        await wait_until(lambda: len(got) == 2, what="two outputs")
    assert got[0] == "mine" and got[1] != "mine"


# -- replies -----------------------------------------------------------------------------------


async def test_a_forged_reply_address_gets_no_reply(caplog: pytest.LogCaptureFixture) -> None:
    """A reply-to header naming an event topic: the service does not publish there."""
    broker = MemoryBroker()
    app = App(backend=MemoryBackend(broker=broker))

    @app.handler(topic="t", event="e")
    async def answer(event: Event[dict]) -> dict[str, int]:
        return {"x": 1}

    async with app:
        with caplog.at_level(logging.WARNING, logger="dispytch.listener"):
            broker.publish(
                "t", envelope("e", {}), headers={REPLY_TO_HEADER: "orders", CORRELATION_HEADER: "1"}
            )
            await broker.wait_idle()
    assert broker.records("orders") == []
    assert any("not replying to orders" in r.getMessage() for r in caplog.records)


async def test_request_reply_in_one_app_and_checked_arguments() -> None:
    app = App(backend=MemoryBackend(broker=MemoryBroker()))

    @app.handler(topic="t", event="e")
    async def answer(event: Event[dict]) -> dict[str, int]:
        return {"doubled": 2 * event.body["n"]}

    class Ask(EventBase):
        __topic__ = "t"
        __event_type__ = "e"
        n: int

    async with app:
        reply = await app.request(Ask(n=21), timeout=5)
        assert reply.body == {"doubled": 42} and reply.type == "dispytch.reply"
        assert reply.topic.startswith("dispytch.reply.")
        with pytest.raises(ConfigurationError, match="reply="):
            await app.request(Ask(n=1), reply=dict)  # type: ignore[arg-type]
        with pytest.raises(RegistrationError, match="timeout"):
            await app.request(Ask(n=1), timeout=0)


async def test_a_reply_nobody_waits_for_is_dropped() -> None:
    app = App(backend=MemoryBackend(broker=MemoryBroker()))
    first = asyncio.Event()

    @app.handler(topic="t", event="e")
    async def answer(event: Event[dict]) -> dict[str, Any]:
        if event.body["n"] == 1:
            await first.wait()
        return {"n": event.body["n"]}

    class Ask(EventBase):
        __topic__ = "t"
        __event_type__ = "e"
        n: int

    async with app:
        with pytest.raises(RequestTimeout):
            await app.request(Ask(n=1), timeout=0.05)
        first.set()  # its reply comes now, to nobody
        assert (await app.request(Ask(n=2), timeout=5)).body == {"n": 2}
