"""App.health(): started, listening, subscribed, connected (from Consumer.lag()), progress."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from dispytch import App, Event, RegistrationError
from dispytch.health import Health
from dispytch.memory import MemoryBackend, MemoryConsumer
from tests.helpers import wait_until
from tests.unit.support import Body, Placed
from tests.unit.test_prometheus import gated_app


class Flaky(MemoryConsumer):
    """A memory consumer whose broker check can be made to fail or hang."""

    mode = "ok"

    async def lag(self) -> dict[str, int]:
        if Flaky.mode == "down":
            raise ConnectionError("connection refused by s3cret-host")
        if Flaky.mode == "hang":
            await asyncio.sleep(3600)
        return await super().lag()


class FlakyBackend(MemoryBackend):
    def consumer(self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None) -> Any:
        return Flaky(self.broker, group)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Flaky.mode = "ok"


def flaky_app(**options: Any) -> App:
    backend = FlakyBackend("memory://")
    backend.secrets = frozenset({"s3cret-host"})
    return App(backend=backend, **options)


async def test_health_of_an_app_through_its_life() -> None:
    app = App("memory://", health_interval=0.05)

    @app.handler(topic="orders", event="placed")
    async def place(event: Event[Body]) -> None: ...

    before = app.health()
    assert (before.started, before.ready, before.reason) == (False, False, "not started")
    async with app:
        first = app.health()
        assert (first.started, first.listening, first.subscribed, first.ready) == (
            True,
            True,
            True,
            True,
        )
        await wait_until(lambda: app.health().connected is True, what="a broker check")
        await app.emit(Placed(n=1))
        await wait_until(lambda: app.health().last_progress is not None, what="progress")
        health = app.health()
        assert health.in_flight == 0 and health.checked_at is not None
        data = health.to_dict()
        assert data["ready"] is True and data["reason"] is None and data["connected"] is True
    assert app.health().reason == "not started"


async def test_an_app_without_handlers_is_ready_once_started_and_never_checks() -> None:
    app = App("memory://")
    async with app:
        health = app.health()
        assert health.ready and not health.listening and health.connected is None
        assert health.lag is None


async def test_a_broker_that_fails_the_check_is_not_connected_then_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = flaky_app(health_interval=0.05)

    @app.handler(topic="orders", event="placed")
    async def place(event: Event[Body]) -> None: ...

    with caplog.at_level(logging.INFO, logger="dispytch.health"):
        async with app:
            app.health()
            await wait_until(lambda: app.health().connected is True, what="connected")
            Flaky.mode = "down"
            await wait_until(lambda: app.health().connected is False, what="disconnected")
            health = app.health()
            assert not health.ready
            assert health.reason is not None and "ConnectionError" in health.reason
            assert "s3cret-host" not in health.reason and "***" in health.reason
            Flaky.mode = "ok"
            await wait_until(lambda: app.health().ready, what="ready again")
    messages = [r.getMessage() for r in caplog.records if r.name == "dispytch.health"]
    assert len([m for m in messages if "does not answer" in m]) == 1, messages  # once
    assert any("answers the health check again" in m for m in messages)


async def test_a_check_the_broker_never_answers_times_out_as_not_connected() -> None:
    app = flaky_app(health_interval=0.05)

    @app.handler(topic="orders", event="placed")
    async def place(event: Event[Body]) -> None: ...

    async with app:
        Flaky.mode = "hang"
        app.health()
        # each check is bounded by max(interval, 1 s)
        await wait_until(lambda: app.health().connected is False, timeout=5, what="timed out")
        assert "no answer within 1s" in (app.health().reason or "")


async def test_work_that_makes_no_progress_is_not_ready_then_ready_again() -> None:
    app, _, gate, _ = gated_app(health_interval=0.05, stall_timeout=0.3)

    async with app:
        await app.emit(Placed(n=1))
        await wait_until(lambda: app.health().in_flight == 1, what="held")
        await wait_until(lambda: not app.health().ready, timeout=5, what="stalled")
        reason = app.health().reason or ""
        assert "no message settled" in reason and "1 in flight" in reason
        gate.set()
        await wait_until(lambda: app.health().ready, what="progress again")


async def test_an_idle_app_is_not_stalled() -> None:
    app = App("memory://", health_interval=0.05, stall_timeout=0.05)

    @app.handler(topic="orders", event="placed")
    async def place(event: Event[Body]) -> None: ...

    async with app:
        started = time.time()
        # broker checks keep coming, longer than stall_timeout after the start, nothing to do
        await wait_until(
            lambda: (app.health().checked_at or 0.0) > started + 0.2, what="later checks"
        )
        assert app.health().ready


async def test_a_stopped_listener_is_not_ready() -> None:
    app = App("memory://")

    @app.handler(topic="orders", event="placed")
    async def place(event: Event[Body]) -> None: ...

    async with app:
        assert app.listener is not None
        app.listener.stop()
        await wait_until(lambda: not app.health().listening, what="listener stopped")
        assert app.health().reason == "the listener stopped"


async def test_health_interval_none_never_asks_the_broker() -> None:
    app = flaky_app(health_interval=None)

    @app.handler(topic="orders", event="placed")
    async def place(event: Event[Body]) -> None: ...

    Flaky.mode = "down"
    async with app:
        health = app.health()
        assert health.connected is None and health.ready
        assert app._monitor is not None and app._monitor._task is None  # no check scheduled


def test_health_options_are_checked() -> None:
    with pytest.raises(RegistrationError, match="health_interval"):
        App("memory://", health_interval=0)
    with pytest.raises(RegistrationError, match="stall_timeout"):
        App("memory://", stall_timeout=-1)
    with pytest.raises(RegistrationError, match="stall_timeout"):
        App("memory://", stall_timeout=None)  # type: ignore[arg-type]


def test_health_is_a_small_frozen_dataclass() -> None:
    health = Health(True, True, True, None, 0, None, None, None, None)
    assert health.ready
    with pytest.raises(AttributeError):
        health.started = False  # type: ignore[misc]
