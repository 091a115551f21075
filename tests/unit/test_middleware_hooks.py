"""The cheap middleware hooks (after_consume, after_publish), the app life hooks (startup,
shutdown) and the failed attempts a consume context records."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dispytch import App, Event, EventBase, HandlerGroup
from dispytch.listener import pipeline as pipeline_module
from dispytch.middleware import ConsumeContext, ConsumeNext, Middleware, PublishContext
from dispytch.testing import TestClient
from tests.helpers import wait_until
from tests.unit.support import Body, Placed, envelope, memory_listener, running


class Recorder(Middleware):
    def __init__(self, log: list[Any] | None = None) -> None:
        self.log = log if log is not None else []
        self.consumed: list[tuple[str | None, str | None, float | None, list[Any] | None]] = []
        self.published: list[tuple[int, list[Any] | None]] = []

    def after_consume(self, context: ConsumeContext) -> None:
        attempts = None
        if context.failed_attempts is not None:
            attempts = [
                (a.handler.rsplit(".", 1)[-1], a.attempt, type(a.error).__name__, a.retried)
                for a in context.failed_attempts
            ]
        self.consumed.append((context.outcome, context.event_type, context.duration, attempts))
        self.log.append(("after_consume", context.outcome))

    def after_publish(self, context: PublishContext) -> None:
        self.published.append((len(context.messages), context.errors))

    async def startup(self, app: App) -> None:
        self.log.append(("startup", app.listener is not None))

    async def shutdown(self, app: App) -> None:
        self.log.append(("shutdown", app.listener is not None))


async def test_after_consume_sees_every_outcome_with_duration_and_failed_attempts() -> None:
    recorder = Recorder()
    app = App("memory://", middleware=[recorder])
    calls: list[int] = []

    @app.handler(topic="orders", event="placed", retries=1, retry_interval=0)
    async def place(event: Event[Body]) -> None:
        calls.append(event.body["n"])
        if event.body["n"] == 1 and calls.count(1) == 1:
            raise ConnectionError("first try fails")
        if event.body["n"] == 2:
            raise ValueError("always fails")

    async with TestClient(app) as client:
        await client.emit(Placed(n=0))
        await client.emit(Placed(n=1))
        await client.emit(Placed(n=2))
        await client.publish_raw("orders", envelope("other", {}))
        await client.wait_idle()
    outcomes = sorted(((c[0], c[1], c[3]) for c in recorder.consumed), key=str)
    assert outcomes == [
        (
            "dead_lettered",
            "placed",
            [("place", 1, "ValueError", True), ("place", 2, "ValueError", False)],
        ),
        ("handled", "placed", None),
        ("handled", "placed", [("place", 1, "ConnectionError", True)]),
        ("no_handler", "other", None),
    ]
    assert all(c[2] is not None and c[2] >= 0 for c in recorder.consumed)
    assert recorder.published == [(1, [None])] * 3


async def test_failed_attempt_names_its_handler_pattern_and_type() -> None:
    seen: list[Any] = []

    class Keep(Middleware):
        def after_consume(self, context: ConsumeContext) -> None:
            seen.extend(context.failed_attempts or ())

    app = App("memory://", middleware=[Keep()])

    @app.handler(topic="user:{user_id}:orders", event="placed")
    async def fail(event: Event[Body]) -> None:
        raise KeyError("x")

    class UserPlaced(EventBase):
        __topic__ = "user:{user_id}:orders"
        __event_type__ = "placed"
        user_id: str

    async with TestClient(app) as client:
        await client.emit(UserPlaced(user_id="7"))
        await client.wait_idle()
    (attempt,) = seen
    assert (attempt.handler, attempt.pattern, attempt.event_type) == (
        "test_failed_attempt_names_its_handler_pattern_and_type.<locals>.fail",
        "user:{user_id}:orders",
        "placed",
    )
    assert attempt.retried is False and attempt.at > 0 and isinstance(attempt.error, KeyError)
    assert "KeyError" in repr(attempt)


async def test_after_consume_only_builds_no_coroutine_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With after_consume hooks only, the scheduler calls ``run`` itself (through a plain
    function): no consume chain coroutine wraps it."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the consume chain ran without consume middleware")

    monkeypatch.setattr(pipeline_module.Pipeline, "run_observed", refuse)
    recorder = Recorder()
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None: ...

    broker, consumer, listener = memory_listener(group, middleware=[recorder])
    async with running(listener):
        broker.publish("orders", envelope("placed", {"n": 1}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    assert [c[0] for c in recorder.consumed] == ["handled"]


async def test_after_consume_runs_at_settle_inside_the_consume_scopes() -> None:
    log: list[Any] = []

    class Around(Middleware):
        async def consume(self, context: ConsumeContext, call_next: ConsumeNext) -> None:
            log.append(("consume", "in"))
            await call_next(context)
            log.append(("consume", "out"))

    app = App("memory://", middleware=[Around(), Recorder(log)])

    @app.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None: ...

    async with TestClient(app) as client:
        await client.emit(Placed(n=1))
        await client.wait_idle()
    assert log == [
        ("startup", True),
        ("consume", "in"),
        ("after_consume", "handled"),
        ("consume", "out"),
        ("shutdown", True),
    ]


async def test_a_raising_hook_is_logged_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Middleware):
        def after_consume(self, context: ConsumeContext) -> None:
            raise RuntimeError("hook\nbroke")

        def after_publish(self, context: PublishContext) -> None:
            raise RuntimeError("publish hook broke")

    recorder = Recorder()
    app = App("memory://", middleware=[Broken(), recorder])

    @app.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None: ...

    with caplog.at_level(logging.ERROR, logger="dispytch.middleware"):
        async with TestClient(app) as client:
            await client.emit(Placed(n=1))
            await client.wait_idle()
            assert client.dead_letters == []
    assert [c[0] for c in recorder.consumed] == ["handled"]
    assert recorder.published == [(1, [None])]
    lines = [r.getMessage() for r in caplog.records if r.name == "dispytch.middleware"]
    assert any("hook\\nbroke" in line for line in lines), lines  # escaped: one line
    assert any("publish hook broke" in line for line in lines), lines


async def test_after_publish_sees_errors_of_a_failed_emit() -> None:
    recorder = Recorder()
    app = App("memory://", middleware=[recorder])

    class Refusing(Middleware):
        async def publish(self, context: PublishContext, call_next: Any) -> None:
            raise ConnectionError("broker gone")

    app.add_middleware(Refusing())
    async with TestClient(app) as client:
        with pytest.raises(ConnectionError):
            await client.emit(Placed(n=1))
    assert recorder.published == [(1, None)]


async def test_startup_and_shutdown_run_once_each_around_the_listener() -> None:
    log: list[Any] = []
    app = App("memory://", middleware=[Recorder(log)])

    @app.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None: ...

    async with app:
        assert log == [("startup", True)]
    assert log == [("startup", True), ("shutdown", True)]
    emit_only = App("memory://", middleware=[Recorder(log := [])])
    async with emit_only:
        pass
    assert log == [("startup", False), ("shutdown", False)]
