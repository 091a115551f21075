"""Middleware: scopes, order, outcomes, headers in and out, errors, and no cost without any."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from dispytch import App, Event, EventBase, HandlerGroup, RegistrationError
from dispytch.listener import pipeline as pipeline_module
from dispytch.middleware import (
    ConsumeContext,
    ConsumeNext,
    HandleNext,
    HandlerCall,
    Middleware,
    PublishContext,
    PublishNext,
)
from dispytch.seam import DEAD_LETTER_REASONS
from dispytch.testing import TestClient
from tests.helpers import wait_until
from tests.unit.support import envelope, memory_listener, running

Body = dict[str, Any]


class Trace(Middleware):
    """Appends ``(name, scope, phase, detail)`` to a shared log around each scope."""

    def __init__(self, name: str, log: list[tuple[str, ...]]) -> None:
        self.name = name
        self.log = log

    async def consume(self, context: ConsumeContext, call_next: ConsumeNext) -> None:
        self.log.append((self.name, "consume", "in", context.topic))
        await call_next(context)
        self.log.append((self.name, "consume", "out", str(context.outcome)))

    async def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        self.log.append((self.name, "handle", "in", str(call.attempt)))
        try:
            return await call_next(call)
        finally:
            self.log.append((self.name, "handle", "out", str(call.attempt)))

    async def publish(self, context: PublishContext, call_next: PublishNext) -> None:
        self.log.append((self.name, "publish", "in", context.messages[0].topic))
        await call_next(context)
        self.log.append((self.name, "publish", "out", str(context.errors)))


class HandleOnly(Middleware):
    def __init__(self, name: str, log: list[tuple[str, ...]]) -> None:
        self.name = name
        self.log = log

    async def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        self.log.append((self.name, "handle", "in", call.handler))
        return await call_next(call)


class Placed(EventBase):
    __topic__ = "orders"
    __event_type__ = "placed"
    n: int


listener_with = memory_listener


# -- order ----------------------------------------------------------------------------------------


async def test_order_app_outside_group_outside_handler_first_listed_outermost() -> None:
    log: list[tuple[str, ...]] = []
    group = HandlerGroup(middleware=[HandleOnly("group1", log)])
    group.add_middleware(HandleOnly("group2", log))

    @group.handler(topic="orders", event="placed", middleware=[HandleOnly("own", log)])
    async def handle(event: Event[Body]) -> None:
        log.append(("handler", "", "", ""))

    app = App("memory://", middleware=[Trace("a", log)])
    app.add_middleware(Trace("b", log))
    app.add_handler_group(group)
    async with TestClient(app) as client:
        await client.emit(Placed(n=1))
        await client.wait_idle()
    assert [entry[:3] for entry in log] == [
        ("a", "publish", "in"),
        ("b", "publish", "in"),
        ("b", "publish", "out"),
        ("a", "publish", "out"),
        ("a", "consume", "in"),
        ("b", "consume", "in"),
        ("a", "handle", "in"),
        ("b", "handle", "in"),
        ("group1", "handle", "in"),
        ("group2", "handle", "in"),
        ("own", "handle", "in"),
        ("handler", "", ""),
        ("b", "handle", "out"),
        ("a", "handle", "out"),
        ("b", "consume", "out"),
        ("a", "consume", "out"),
    ]
    assert log[-1] == ("a", "consume", "out", "handled")
    assert log[3] == ("a", "publish", "out", "[None]")


async def test_group_middleware_wraps_only_that_groups_handlers() -> None:
    log: list[tuple[str, ...]] = []
    audited = HandlerGroup(middleware=[HandleOnly("audit", log)])
    plain = HandlerGroup()

    @audited.handler(topic="orders", event="placed")
    async def one(event: Event[Body]) -> None: ...

    @plain.handler(topic="orders", event="placed")
    async def two(event: Event[Body]) -> None: ...

    app = App("memory://")
    app.add_handler_group(audited)
    app.add_handler_group(plain)
    async with TestClient(app) as client:
        await client.emit(Placed(n=1))
        await client.wait_idle()
        assert len(client.handled) == 2
    assert log == [("audit", "handle", "in", one.__qualname__)]


# -- outcomes -------------------------------------------------------------------------------------


class Outcomes(Middleware):
    def __init__(self) -> None:
        self.messages: list[ConsumeContext] = []
        self.attempts: list[tuple[str, int, str, bool]] = []

    async def consume(self, context: ConsumeContext, call_next: ConsumeNext) -> None:
        try:
            await call_next(context)
        finally:
            self.messages.append(context)

    async def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        try:
            result = await call_next(call)
        except Exception as exc:
            retry = call.will_retry(exc)
            self.attempts.append((call.handler, call.attempt, type(exc).__name__, retry))
            raise
        self.attempts.append((call.handler, call.attempt, "ok", False))
        return result


async def test_outcomes_handled_no_handler_retried_dead_lettered() -> None:
    group = HandlerGroup()
    calls = 0

    @group.handler(topic="user:{user_id}:orders", event="placed", retries=2, retry_interval=0)
    async def flaky(event: Event[Body], user_id: str = "") -> None:
        nonlocal calls
        calls += 1
        if event.body["n"] == 2 or calls == 1:
            raise ConnectionError("flaky")

    seen = Outcomes()
    broker, consumer, listener = listener_with(group, middleware=[seen])
    async with running(listener):
        broker.publish("user:7:orders", envelope("placed", {"n": 1}, id_="e1"), key=b"k")
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="first")
        broker.publish("user:7:orders", envelope("placed", {"n": 2}, id_="e2"), key=b"k")
        broker.publish("user:7:orders", envelope("other", {}, id_="e3"), key=b"k")
        broker.publish("user:7:orders", b"junk", key=b"k")
        await wait_until(lambda: consumer.settled == 4, timeout=5, what="all settled")
    first, second, other, junk = seen.messages
    assert (first.outcome, first.event_id, first.event_type) == ("handled", "e1", "placed")
    assert first.handlers == (flaky.__qualname__,)
    assert first.patterns == ("user:{user_id}:orders",)
    assert first.topic == "user:7:orders"
    assert first.failure is None and first.duration is not None and first.duration >= 0
    assert second.outcome == "dead_lettered"
    assert second.failure is not None and second.failure.reason == "handler"
    assert isinstance(second.error, ConnectionError)
    assert (other.outcome, other.handlers) == ("no_handler", ())
    assert junk.outcome == "dead_lettered" and junk.event_id is None
    assert junk.failure is not None and junk.failure.reason == "decode"
    name = flaky.__qualname__
    assert seen.attempts == [
        (name, 1, "ConnectionError", True),
        (name, 2, "ok", False),
        (name, 1, "ConnectionError", True),
        (name, 2, "ConnectionError", True),
        (name, 3, "ConnectionError", False),
    ]


async def test_handed_back_at_shutdown_is_seen() -> None:
    started = asyncio.Event()
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def hang(event: Event[Body]) -> None:
        started.set()
        await asyncio.Event().wait()

    seen = Outcomes()
    broker, consumer, listener = listener_with(group, middleware=[seen], shutdown_timeout=0)
    task = asyncio.create_task(listener.listen())
    broker.publish("orders", envelope("placed", {"n": 1}))
    await asyncio.wait_for(started.wait(), 5)
    listener.stop()
    await asyncio.wait_for(task, 5)
    (context,) = seen.messages
    assert context.outcome == "handed_back"
    assert consumer.log == [("nack", 0)]


# -- headers in and out ---------------------------------------------------------------------------


class Correlate(Middleware):
    """Publish scope adds a header; consume scope reads it back."""

    def __init__(self) -> None:
        self.consumed: list[str | None] = []

    async def publish(self, context: PublishContext, call_next: PublishNext) -> None:
        for message in context.messages:
            message.headers["x-correlation"] = f"c-{message.event.id}"
        await call_next(context)

    async def consume(self, context: ConsumeContext, call_next: ConsumeNext) -> None:
        self.consumed.append(context.headers.get("x-correlation"))
        await call_next(context)


async def test_publish_scope_adds_headers_that_handlers_and_consume_scope_read() -> None:
    got: list[dict[str, str]] = []
    app = App("memory://", middleware=[Correlate()])

    @app.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        got.append(dict(event.headers))

    one, two, three = Placed(n=1), Placed(n=2), Placed(n=3)
    async with TestClient(app) as client:
        await client.emit(one, headers={"tenant": "t1"})
        await client.app.emit_many([two, three], headers={"tenant": "t2"})
        await client.wait_idle()
    assert got == [
        {"tenant": "t1", "x-correlation": f"c-{one.id}"},
        {"tenant": "t2", "x-correlation": f"c-{two.id}"},
        {"tenant": "t2", "x-correlation": f"c-{three.id}"},
    ]
    (middleware,) = app.middleware
    assert isinstance(middleware, Correlate)
    assert middleware.consumed == [f"c-{e.id}" for e in (one, two, three)]


async def test_publish_scope_sees_errors() -> None:
    from dispytch.emitter import EventEmitter
    from dispytch.emitter.producer import Producer

    class Refusing(Producer):
        async def send(self, topic: str, payload: bytes, config: Any = None, **kw: Any) -> None:
            raise ConnectionError("down")

        async def send_many(self, messages: Any) -> list[BaseException | None]:
            return [None if i % 2 else ConnectionError("down") for i, _ in enumerate(messages)]

    errors: list[Any] = []

    class Watch(Middleware):
        async def publish(self, context: PublishContext, call_next: PublishNext) -> None:
            try:
                await call_next(context)
            finally:
                errors.append([type(e).__name__ if e else None for e in context.errors or []])

    emitter = EventEmitter(Refusing(), middleware=[Watch()])
    with pytest.raises(ConnectionError):
        await emitter.emit(Placed(n=1))
    with pytest.raises(ConnectionError):
        await emitter.emit_many([Placed(n=1), Placed(n=2)])
    assert errors == [["ConnectionError"], ["ConnectionError", None]]


# -- errors in middleware -------------------------------------------------------------------------


async def test_handle_scope_error_is_a_handler_failure() -> None:
    class Boom(Middleware):
        async def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
            if call.attempt == 1:
                raise RuntimeError("middleware says no")
            return await call_next(call)

    group = HandlerGroup()
    ran: list[int] = []

    @group.handler(topic="orders", event="placed", retries=1, retry_interval=0)
    async def handle(event: Event[Body]) -> None:
        ran.append(event.body["n"])

    broker, consumer, listener = listener_with(group, middleware=[Boom()])
    async with running(listener):
        broker.publish("orders", envelope("placed", {"n": 1}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert ran == [1]  # the retry ran the handler
    assert consumer.log == [("ack", 0)]


@pytest.mark.parametrize("where", ["before", "without"])
async def test_consume_scope_failing_before_settle_dead_letters(where: str) -> None:
    class Broken(Middleware):
        async def consume(self, context: ConsumeContext, call_next: ConsumeNext) -> None:
            if where == "before":
                raise ValueError("metrics backend down")

    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        raise AssertionError("not reached")

    broker, consumer, listener = listener_with(group, middleware=[Broken()])
    async with running(listener):
        broker.publish("orders", envelope("placed", {"n": 1}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert consumer.log == [("dead", 0), ("ack", 0)]
    (dead,) = broker.dead_letters("orders")
    assert dead.reason == "middleware"
    assert dead.reason in DEAD_LETTER_REASONS  # the AsyncAPI document lists it
    assert dead.error.startswith("ValueError" if where == "before" else "MiddlewareError")


async def test_consume_scope_failing_after_settle_is_logged_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class LateBoom(Middleware):
        async def consume(self, context: ConsumeContext, call_next: ConsumeNext) -> None:
            await call_next(context)
            raise ValueError("after the fact")

    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None: ...

    broker, consumer, listener = listener_with(group, middleware=[LateBoom()])
    with caplog.at_level(logging.ERROR, logger="dispytch.listener"):
        async with running(listener):
            broker.publish("orders", envelope("placed", {"n": 1}))
            await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert consumer.log == [("ack", 0)]
    assert broker.dead_letters() == []
    assert any("after a message from orders was settled" in r.getMessage() for r in caplog.records)


# -- TestClient and observers compose with user middleware ----------------------------------------


async def test_test_client_records_beside_user_middleware_and_the_app_observer() -> None:
    log: list[tuple[str, ...]] = []
    observed: list[str] = []

    class Observer:
        def on_handled(self, handler: str, event: Event[Any]) -> None:
            observed.append(f"handled {event.body['n']}")

        def on_dead_letter(self, message: Any, failure: Any) -> None:
            observed.append(f"dead {failure.reason}")

    app = App("memory://", middleware=[Trace("user", log)])
    app.observer = Observer()

    @app.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        if event.body["n"] == 2:
            raise ValueError("no")

    async with TestClient(app) as client:
        await client.emit(Placed(n=1))
        await client.emit(Placed(n=2))
        await client.wait_idle()
        assert [e.body["n"] for e in client.handled_by(handle)] == [1]
        assert [f.reason for _, f in client.failures] == ["handler"]
        assert [d.reason for d in client.dead_letters] == ["handler"]
    assert observed == ["handled 1", "dead handler"]
    assert ("user", "consume", "out", "handled") in log
    assert ("user", "consume", "out", "dead_lettered") in log
    assert len(app.middleware) == 1  # the recorder was removed again


# -- registration ---------------------------------------------------------------------------------


def test_registration_errors() -> None:
    class ConsumeOnly(Middleware):
        async def consume(self, context: ConsumeContext, call_next: ConsumeNext) -> None:
            await call_next(context)

    with pytest.raises(RegistrationError, match="pass an instance"):
        App("memory://", middleware=[Trace])
    with pytest.raises(RegistrationError, match="no consume"):
        App("memory://").add_middleware(object())
    with pytest.raises(RegistrationError, match="no handle"):
        HandlerGroup(middleware=[ConsumeOnly()])
    group = HandlerGroup()
    with pytest.raises(RegistrationError, match="no handle"):
        group.handler(topic="t", event="e", middleware=[ConsumeOnly()])


# -- no middleware: nothing built, nothing awaited ------------------------------------------------


async def test_no_middleware_builds_no_context(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a middleware context was built without middleware")

    monkeypatch.setattr(pipeline_module, "ConsumeContext", refuse)
    monkeypatch.setattr(pipeline_module, "HandlerCall", refuse)
    group = HandlerGroup()
    got: list[int] = []

    @group.handler(topic="orders", event="placed", retries=1, retry_interval=0)
    async def handle(event: Event[Body]) -> None:
        got.append(event.body["n"])
        if len(got) == 1:
            raise ConnectionError("retry once")

    broker, consumer, listener = listener_with(group)
    async with running(listener):
        broker.publish("orders", envelope("placed", {"n": 1}))
        broker.publish("orders", b"junk")
        await wait_until(lambda: consumer.settled == 2, timeout=5, what="settle")
    assert got == [1, 1]
    assert sorted(consumer.log) == [("ack", 0), ("ack", 1), ("dead", 1)]
