"""The memory backend keeps the same poison rules as the brokers: dead letters keep the original
headers, and no record published straight into the broker can crash a consumer's loop."""

from __future__ import annotations

from typing import Any

import pytest

from dispytch import App, Event
from dispytch.memory import MemoryBackend, MemoryBroker
from tests.helpers import wait_until
from tests.unit.support import envelope


def _app(broker: MemoryBroker) -> tuple[App, list[Any]]:
    app = App(backend=MemoryBackend(broker=broker), group="poison")
    got: list[Any] = []

    @app.handler(topic="orders", event="placed")
    async def handle(event: Event[dict[str, Any]]) -> None:
        if event.body.get("fail"):
            raise RuntimeError("boom")
        got.append(event.body["n"])

    return app, got


async def test_dead_letters_keep_the_original_headers() -> None:
    broker = MemoryBroker()
    app, _ = _app(broker)
    async with app:
        broker.publish(
            "orders",
            envelope("placed", {"n": 1, "fail": True}),
            b"k",
            {"traceparent": "00-abc-01", "x-dispytch-reason": "forged"},
        )
        await wait_until(lambda: len(broker.dead_letters("orders")) == 1, what="a dead letter")
    [dead] = broker.dead_letters("orders")
    assert dead.headers["traceparent"] == "00-abc-01"
    assert dead.reason == "handler" and dead.key == b"k"


async def test_records_published_straight_into_the_broker_cannot_crash_a_consumer() -> None:
    broker = MemoryBroker()
    app, got = _app(broker)
    async with app:
        odd: list[tuple[Any, Any]] = [
            ("text-key", {b"raw": b"\xff\xfe", "n": 1}),
            (bytearray(b"k"), {"h": None}),
            (None, {}),
        ]
        for n, (key, headers) in enumerate(odd):
            broker.publish("orders", envelope("placed", {"n": n}), key, headers)
        broker.publish("orders", b"\xff not an envelope")
        broker.publish("orders", envelope("placed", {"n": 3}))
        await wait_until(lambda: got == [0, 1, 2, 3], what="every readable record")
        await wait_until(lambda: len(broker.dead_letters("orders")) == 1, what="the bad one")
    record = broker.records("orders")[0]
    assert record.key == b"text-key" and record.headers == {"raw": "\\xff\\xfe", "n": "1"}
    with pytest.raises(TypeError, match="key is bytes or None"):
        broker.publish("orders", b"{}", ["unhashable"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="topic is text"):
        broker.publish(b"orders", b"{}")  # type: ignore[arg-type]
