"""Consumer lag as each broker reports it (Consumer.lag()), through App.health(): messages
waiting while the handlers are busy, none once they caught up; Redis Pub/Sub and core NATS
keep no backlog (lag None) but still answer the check."""

from __future__ import annotations

import asyncio
from typing import Any

from dispytch import App, Event, EventBase
from tests.conformance.conftest import BackendUnderTest
from tests.helpers import wait_until

NO_BACKLOG = {"redis", "nats_core"}


async def test_lag_while_busy_and_after(
    backend: BackendUnderTest, topic: str, uid: str, options: dict[str, Any]
) -> None:
    url = f"memory://ops-{uid}" if backend.name == "memory" else backend.url
    app = App(url, group=f"ops_{uid}", concurrency=4, health_interval=0.2, **options)
    gate = asyncio.Event()
    handled: list[str] = []

    @app.handler(topic=topic, event="waiting")
    async def busy(event: Event[dict[str, Any]]) -> None:
        await gate.wait()
        handled.append(event.id)

    waiting = type("Waiting", (EventBase,), {"__topic__": topic, "__event_type__": "waiting"})
    async with app:
        app.health()  # starts the checks
        await app.emit_many([waiting() for _ in range(30)])
        await wait_until(lambda: app.health().connected is True, what="a broker check")
        if backend.name in NO_BACKLOG:
            await wait_until(lambda: app.health().in_flight == 4, what="4 held")
            assert app.health().lag is None
        else:
            # 4 are held by the listener (its concurrency); most of the rest wait in the broker
            await wait_until(
                lambda: sum((app.health().lag or {}).values()) >= 20,
                timeout=15,
                what=f"lag reported: {app.health().lag}",
            )
            assert all(isinstance(v, int) and v >= 0 for v in (app.health().lag or {}).values())
        gate.set()
        await wait_until(lambda: len(handled) == 30, timeout=30, what="all handled")
        if backend.name not in NO_BACKLOG:
            await wait_until(
                lambda: sum((app.health().lag or {}).values()) == 0,
                timeout=15,
                what=f"no lag left: {app.health().lag}",
            )
        assert app.health().ready
