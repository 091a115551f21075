"""The in-memory backend: Dispytch's listener versus a plain loop over the same consumer.

FastStream has no comparable in-process broker (its TestBroker skips the transport), so this
backend compares raw and Dispytch only. Both variants fill a private broker in their own process
before the clock starts.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dispytch import App
from dispytch.memory import MemoryBackend, MemoryBroker, MemoryConsumer, MemoryProducer
from harness import dispytch_side
from harness.common import (
    Meter,
    Spec,
    Stopwatch,
    envelopes,
    payloads,
    publish_results,
    publish_sizes,
    work,
)

URL = "memory://"
NAME = "memory"


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

    seq_n, batch = publish_sizes(spec)
    producer = MemoryProducer(MemoryBroker())
    items = envelopes(seq_n)
    with Stopwatch() as seq:
        for item in items:
            await producer.send("bench", json.dumps(item).encode())
    items = envelopes(spec.events)
    with Stopwatch() as many:
        for i in range(0, len(items), batch):
            await asyncio.gather(
                *(producer.send("bench", json.dumps(x).encode()) for x in items[i : i + batch])
            )
    return publish_results(seq_n, seq, spec.events, many, batch)


async def publish_dispytch(spec: Spec) -> dict[str, Any]:
    spec.url = "memory://bench-publish"
    return await dispytch_side.publish(spec)


__all__ = ["App"]
