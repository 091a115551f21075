"""Redis Streams: one backlog stream per field layout, one consumer group per run.

Dispytch and the raw loop read entries ``{payload: bytes}`` (Dispytch's layout); FastStream
reads its own layout ``{__data__: bytes}``, so it gets a twin stream with the same bytes.
Groups are created at id ``0`` before each run, so every variant drains the whole backlog.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

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

URL = "redis+streams://127.0.0.1:6379/0"
NAME = "redis_streams"


def plain_url(url: str) -> str:
    return url.replace("+streams", "", 1)


class Setup:
    def __init__(self, url: str) -> None:
        self.url = url
        self.keys: list[str] = []
        self.backlogs: dict[tuple[str, str], str] = {}

    async def check(self) -> str | None:
        client = Redis.from_url(plain_url(self.url))
        try:
            await asyncio.wait_for(client.ping(), 5)
        except Exception as exc:
            return f"Redis does not answer ({type(exc).__name__})"
        finally:
            await client.aclose()
        return None

    async def _fill(self, client: Redis, field: str, n: int) -> str:
        key = unique("bench-stream")
        self.keys.append(key)
        data = payloads(n)
        for i in range(0, n, 2000):
            pipe = client.pipeline(transaction=False)
            for seq in range(i, min(i + 2000, n)):
                pipe.xadd(key, {field: data[seq]})
            await pipe.execute()
        return key

    async def prepare(self, scenario: str, specs: list[Spec]) -> None:
        client = Redis.from_url(plain_url(self.url))
        try:
            for spec in specs:
                spec.group = unique(f"bench-{spec.variant}")
                if scenario == "publish":
                    spec.target = unique("bench-pub")
                    self.keys.append(spec.target)
                    continue
                field = "__data__" if spec.variant == "faststream" else "payload"
                key = self.backlogs.get((scenario, field))
                if key is None:
                    key = await self._fill(client, field, spec.events)
                    self.backlogs[(scenario, field)] = key
                spec.target = key
                await client.xgroup_create(key, spec.group, id="0")
        finally:
            await client.aclose()

    async def cleanup(self) -> None:
        if self.keys:
            client = Redis.from_url(plain_url(self.url))
            try:
                await client.delete(*self.keys)
            finally:
                await client.aclose()
        self.keys = []
        self.backlogs = {}


async def consume_raw(spec: Spec) -> dict[str, Any]:
    """The naive loop: XREADGROUP 100 at a time, one XACK per entry after the work."""
    client = Redis.from_url(plain_url(spec.url))
    meter = Meter(spec.events)

    async def loop() -> None:
        # Ends by itself: cancelling redis-py in the middle of a blocking XREADGROUP can hang.
        while not meter.done.is_set():
            reply: Any = await client.xreadgroup(
                spec.group, "c1", {spec.target: ">"}, count=100, block=200
            )
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    work(fields[b"payload"])
                    await client.xack(spec.target, spec.group, entry_id)
                    meter.tick()

    task = asyncio.create_task(loop())
    try:
        await meter.wait()
        meter.done.set()
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
    return meter.result()


async def consume_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.consume(spec)


async def consume_faststream(spec: Spec) -> dict[str, Any]:
    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(plain_url(spec.url), logger=None)
    meter = Meter(spec.events)

    @broker.subscriber(  # type: ignore[untyped-decorator]
        stream=StreamSub(spec.target, group=spec.group, consumer="c1", max_records=100)
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
    client = Redis.from_url(plain_url(spec.url))

    async def many(items: Sequence[dict[str, Any]]) -> None:
        pipe = client.pipeline(transaction=False)
        for x in items:
            pipe.xadd(spec.target, {"payload": json.dumps(x).encode()})
        await pipe.execute()

    try:
        return await timed_publish(
            spec, lambda x: client.xadd(spec.target, {"payload": json.dumps(x).encode()}), many
        )
    finally:
        await client.aclose()


async def publish_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.publish(spec)


async def publish_faststream(spec: Spec) -> dict[str, Any]:
    from faststream.redis import RedisBroker

    broker = RedisBroker(plain_url(spec.url), logger=None)
    await broker.start()
    connection = broker._connection  # what FastStream's own Pipeline dependency uses

    async def many(items: Sequence[dict[str, Any]]) -> None:
        async with connection.pipeline(transaction=False) as pipe:
            for x in items:
                await broker.publish(x, stream=spec.target, pipeline=pipe)
            await pipe.execute()

    try:
        return await timed_publish(spec, lambda x: broker.publish(x, stream=spec.target), many)
    finally:
        await broker.stop()
