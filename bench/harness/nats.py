"""NATS JetStream: a file-backed stream per scenario, one durable pull consumer per run.

Dispytch's NATS backend is JetStream (durable, acked), so this compares JetStream consumers:
nats-py's pull subscription (fetch 100, one ``+ACK`` per message), Dispytch (which uses the
stream the bench created, as it captures the subject) and FastStream's pull subscriber.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable
from typing import Any

import nats
from nats.js.api import StreamConfig

from harness import dispytch_side
from harness.common import (
    Envelope,
    Meter,
    Spec,
    payloads,
    timed_publish,
    unique,
    work,
)

URL = "nats://127.0.0.1:4222"
NAME = "nats"


class Setup:
    def __init__(self, url: str) -> None:
        self.url = url
        self.streams: list[str] = []
        self.backlogs: dict[str, tuple[str, str]] = {}

    async def check(self) -> str | None:
        try:
            nc = await asyncio.wait_for(nats.connect(self.url, max_reconnect_attempts=0), 5)
            await nc.jetstream().account_info()
            await nc.close()
        except Exception as exc:
            return f"NATS JetStream does not answer ({type(exc).__name__})"
        return None

    async def _stream(self, js: Any, scenario: str, **config: Any) -> tuple[str, str]:
        token = uuid.uuid4().hex[:10]
        name, subject = f"bench_{scenario}_{token}", f"bench.{scenario}.{token}"
        await js.add_stream(StreamConfig(name=name, subjects=[subject], **config))
        self.streams.append(name)
        return name, subject

    async def prepare(self, scenario: str, specs: list[Spec]) -> None:
        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            if scenario == "publish":
                name, subject = await self._stream(js, scenario, max_msgs=1000)
            elif scenario in self.backlogs:
                name, subject = self.backlogs[scenario]
            else:
                name, subject = await self._stream(js, scenario)
                data = payloads(max(s.events for s in specs))
                for i in range(0, len(data), 2000):
                    await asyncio.gather(*(js.publish(subject, d) for d in data[i : i + 2000]))
                self.backlogs[scenario] = (name, subject)
        finally:
            await nc.close()
        for spec in specs:
            spec.target = subject
            spec.group = unique(f"bench-{spec.variant}")
            spec.options["stream"] = name

    async def cleanup(self) -> None:
        if not self.streams:
            return
        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            for name in self.streams:
                await js.delete_stream(name)
        finally:
            await nc.close()
        self.streams = []
        self.backlogs = {}


async def consume_raw(spec: Spec) -> dict[str, Any]:
    nc = await nats.connect(spec.url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(spec.target, durable=spec.group, stream=spec.options["stream"])
    meter = Meter(spec.events)

    async def loop() -> None:
        while not meter.done.is_set():
            try:
                messages = await sub.fetch(100, timeout=0.2)
            except nats.errors.TimeoutError:
                continue
            for message in messages:
                work(message.data)
                await message.ack()
                meter.tick()

    task = asyncio.create_task(loop())
    try:
        await meter.wait()
        meter.done.set()
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()
    return meter.result()


async def consume_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.consume(spec)


async def consume_faststream(spec: Spec) -> dict[str, Any]:
    from faststream.nats import JStream, NatsBroker, PullSub

    broker = NatsBroker(spec.url, logger=None)
    meter = Meter(spec.events)

    @broker.subscriber(  # type: ignore[untyped-decorator]
        spec.target,
        stream=JStream(spec.options["stream"], declare=False),
        durable=spec.group,
        pull_sub=PullSub(batch_size=100),
    )
    async def handle(event: Envelope) -> None:
        meter.tick()

    await broker.start()
    try:
        await meter.wait()
    finally:
        await broker.stop()
    return meter.result()


async def publish_raw(spec: Spec) -> dict[str, Any]:
    nc = await nats.connect(spec.url)
    js = nc.jetstream()

    def send(item: dict[str, Any]) -> Awaitable[Any]:
        return js.publish(spec.target, json.dumps(item).encode())

    try:
        return await timed_publish(
            spec, send, lambda items: asyncio.gather(*(send(x) for x in items))
        )
    finally:
        await nc.close()


async def publish_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.publish(spec)


async def publish_faststream(spec: Spec) -> dict[str, Any]:
    from faststream.nats import NatsBroker

    broker = NatsBroker(spec.url, logger=None)
    await broker.start()
    stream = spec.options["stream"]

    def send(item: dict[str, Any]) -> Awaitable[Any]:
        return broker.publish(item, spec.target, stream=stream)

    try:
        return await timed_publish(
            spec, send, lambda items: asyncio.gather(*(send(x) for x in items))
        )
    finally:
        await broker.stop()
