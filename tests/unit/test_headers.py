"""Headers: emitted with an event, read-only in handlers, carried by seed-era producers' emits
without breaking them."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import BaseModel

from dispytch import App, Event, EventBase, EventEmitter
from dispytch.memory import MemoryBroker, MemoryProducer
from dispytch.testing import TestClient

Body = dict[str, Any]


class Placed(EventBase):
    __topic__ = "orders"
    __event_type__ = "placed"
    n: int


def test_event_headers_are_read_only_and_empty_by_default() -> None:
    source = {"tenant": "t1"}
    event: Event[Body] = Event("id", "placed", "orders", {}, 1, source)
    assert event.headers == {"tenant": "t1"}
    with pytest.raises(TypeError):
        event.headers["tenant"] = "t2"  # type: ignore[index]
    assert source == {"tenant": "t1"}
    assert dict(Event("id", "placed", "orders", {}, 1).headers) == {}


async def test_emit_and_emit_many_carry_headers() -> None:
    broker = MemoryBroker()
    emitter = EventEmitter(MemoryProducer(broker))
    await emitter.emit(Placed(n=1), headers={"tenant": "t1"})
    await emitter.emit_many([Placed(n=2), Placed(n=3)], headers={"tenant": "t2"})
    await emitter.emit(Placed(n=4))
    assert [dict(r.headers) for r in broker.records("orders")] == [
        {"tenant": "t1"},
        {"tenant": "t2"},
        {"tenant": "t2"},
        {},
    ]


async def test_handlers_read_headers_and_cannot_change_the_dead_letters() -> None:
    seen: list[dict[str, str]] = []
    refused: list[str] = []
    app = App("memory://")

    @app.handler(topic="orders", event="placed")
    async def handle(event: Event[Body]) -> None:
        seen.append(dict(event.headers))
        try:
            event.headers["tenant"] = "other"  # type: ignore[index]
        except TypeError as exc:
            refused.append(type(exc).__name__)
        raise RuntimeError("park it")

    async with TestClient(app) as client:
        await client.emit(Placed(n=1), headers={"tenant": "t1", "traceparent": "00-a-b-01"})
        await client.wait_idle()
        (dead,) = client.dead_letters
    assert seen == [{"tenant": "t1", "traceparent": "00-a-b-01"}]
    assert dead.headers["tenant"] == "t1"
    assert dead.headers["traceparent"] == "00-a-b-01"
    assert refused == ["TypeError"]


class SeedProducer:
    """What a user of the seed wrote: send(topic, payload, config), nothing else."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, payload: bytes, config: BaseModel | None = None) -> None:
        self.sent.append((topic, payload))


async def test_a_seed_producer_keeps_working_and_headers_are_dropped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = SeedProducer()
    emitter = EventEmitter(producer)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="dispytch.emitter"):
        await emitter.emit(Placed(n=1))
        await emitter.emit(Placed(n=2), headers={"tenant": "t1"})
        await emitter.emit_many([Placed(n=3)], headers={"tenant": "t1"})
    assert [topic for topic, _ in producer.sent] == ["orders"] * 3
    warned = [r for r in caplog.records if "takes no 'headers' argument" in r.getMessage()]
    assert len(warned) == 1
