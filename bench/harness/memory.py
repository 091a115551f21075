"""The in-memory backend: Dispytch's listener versus a plain loop over the same consumer.

FastStream has no comparable in-process broker (its TestBroker skips the transport), so this
backend compares raw and Dispytch only. Both variants fill a private broker in their own process
before the clock starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from dispytch import App
from dispytch.memory import MemoryBackend, MemoryBroker, MemoryConsumer, MemoryProducer
from harness import dispytch_side
from harness.common import (
    Meter,
    Spec,
    payloads,
    timed_publish,
    work,
)

URL = "memory://"
NAME = "memory"
#: Each variant has a private broker in its own process: nothing shared to take turns at
#: (a turn of 100 in-process emits lasts under a millisecond, too short to time fairly).
TURNS = False


class Setup:
    def __init__(self, url: str) -> None:
        self.url = url

    async def check(self) -> str | None:
        return None

    async def prepare(self, scenario: str, specs: list[Spec]) -> None:
        for spec in specs:
            spec.target = "bench"
            spec.group = f"bench-{spec.variant}"

    async def cleanup(self) -> None:
        return None


def _filled(n: int) -> MemoryBroker:
    broker = MemoryBroker()
    for data in payloads(n):
        broker.publish("bench", data)
    return broker


async def consume_raw(spec: Spec) -> dict[str, Any]:
    broker = _filled(spec.events)
    consumer = MemoryConsumer(broker, spec.group, topics=["bench"])
    meter = Meter(spec.events)
    async for message in consumer.listen():
        work(message.payload)
        await consumer.ack(message)
        meter.tick()
        if meter.count == spec.events:
            break
    return meter.result()


async def consume_dispytch(spec: Spec) -> dict[str, Any]:
    broker = _filled(spec.events)
    meter = Meter(spec.events)
    app = dispytch_side.consuming_app(spec, meter, backend=MemoryBackend(broker=broker))
    await app.start()
    try:
        await meter.wait()
    finally:
        await app.stop()
    return meter.result()


async def publish_raw(spec: Spec) -> dict[str, Any]:
    import json

    producer = MemoryProducer(MemoryBroker())

    def send(item: dict[str, Any]) -> Awaitable[None]:
        return producer.send("bench", json.dumps(item).encode())

    return await timed_publish(spec, send, lambda items: asyncio.gather(*(send(x) for x in items)))


async def publish_dispytch(spec: Spec) -> dict[str, Any]:
    spec.url = "memory://bench-publish"
    return await dispytch_side.publish(spec)


__all__ = ["App"]
