"""Redis Pub/Sub: no backlog exists, so another process publishes while the variant consumes.

The worker subscribes, waits until Redis counts the subscriber (``PUBSUB NUMSUB``), then starts
``redis-cli --pipe`` reading a file of N ``PUBLISH`` commands: the publisher is a separate
process, and only the consumer's own CPU is measured. Pub/Sub is at-most-once: a consumer that
falls behind Redis' ``client-output-buffer-limit pubsub`` is disconnected and loses events, so
every result says how many were lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis

from dispytch import App
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

URL = "redis://127.0.0.1:6379/0"
NAME = "redis"


class Setup:
    def __init__(self, url: str) -> None:
        self.url = url

    async def check(self) -> str | None:
        client = Redis.from_url(self.url)
        try:
            await asyncio.wait_for(client.ping(), 5)
        except Exception as exc:
            return f"Redis does not answer ({type(exc).__name__})"
        finally:
            await client.aclose()
        return None

    async def prepare(self, scenario: str, specs: list[Spec]) -> None:
        for spec in specs:
            spec.target = unique(f"bench-{scenario}")
            spec.group = unique(f"bench-{spec.variant}")

    async def cleanup(self) -> None:
        return None  # channels leave nothing behind


def _resp_file(channel: str, n: int) -> str:
    head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(channel), channel.encode())
    fd, path = tempfile.mkstemp(prefix="bench-redis-", suffix=".resp")
    with os.fdopen(fd, "wb") as f:
        for data in payloads(n):
            f.write(head + b"$%d\r\n%s\r\n" % (len(data), data))
    return path


async def _feed_when_subscribed(spec: Spec) -> None:
    """Wait for our subscription to count, then publish the N events from redis-cli."""
    path = _resp_file(spec.target, spec.events)
    client = Redis.from_url(spec.url)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            counts = await client.pubsub_numsub(spec.target)
            if counts and counts[0][1] >= 1:
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the subscriber never showed up in PUBSUB NUMSUB")
    finally:
        await client.aclose()
    parts = urlsplit(spec.url)
    with open(path, "rb") as stdin:  # noqa: ASYNC230 - a local temp file, opened once
        proc = await asyncio.create_subprocess_exec(
            "redis-cli",
            "-h",
            parts.hostname or "127.0.0.1",
            "-p",
            str(parts.port or 6379),
            "--pipe",
            stdin=stdin,
            stdout=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()
    os.unlink(path)


async def _measure(spec: Spec, meter: Meter, start: Callable[[], Awaitable[None]]) -> None:
    await start()
    feeder = asyncio.create_task(_feed_when_subscribed(spec))
    await meter.wait(idle_timeout=5)
    await feeder


async def consume_raw(spec: Spec) -> dict[str, Any]:
    client = Redis.from_url(spec.url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    meter = Meter(spec.events)

    async def loop() -> None:
        async for message in pubsub.listen():
            work(message["data"])
            meter.tick()

    async def start() -> None:
        await pubsub.subscribe(spec.target)
        tasks.append(asyncio.create_task(loop()))

    tasks: list[asyncio.Task[None]] = []
    try:
        await _measure(spec, meter, start)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
    return meter.result()


async def consume_dispytch(spec: Spec) -> dict[str, Any]:
    meter = Meter(spec.events)
    app: App = dispytch_side.consuming_app(spec, meter)
    try:
        await _measure(spec, meter, app.start)
    finally:
        await app.stop()
    return meter.result()


async def consume_faststream(spec: Spec) -> dict[str, Any]:
    from faststream.redis import RedisBroker

    broker = RedisBroker(spec.url, logger=None)
    meter = Meter(spec.events)

    @broker.subscriber(channel=spec.target)  # type: ignore[untyped-decorator]
    async def handle(event: Envelope) -> None:
        meter.tick()

    try:
        await _measure(spec, meter, broker.start)
    finally:
        await broker.stop()
    return meter.result()


async def publish_raw(spec: Spec) -> dict[str, Any]:
    client = Redis.from_url(spec.url)

    async def many(items: Sequence[dict[str, Any]]) -> None:
        pipe = client.pipeline(transaction=False)
        for x in items:
            pipe.publish(spec.target, json.dumps(x).encode())
        await pipe.execute()

    try:
        return await timed_publish(
            spec, lambda x: client.publish(spec.target, json.dumps(x).encode()), many
        )
    finally:
        await client.aclose()


async def publish_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.publish(spec)


async def publish_faststream(spec: Spec) -> dict[str, Any]:
    from faststream.redis import RedisBroker

    broker = RedisBroker(spec.url, logger=None)
    await broker.start()
    connection = broker._connection  # what FastStream's own Pipeline dependency uses

    async def many(items: Sequence[dict[str, Any]]) -> None:
        async with connection.pipeline(transaction=False) as pipe:
            for x in items:
                await broker.publish(x, channel=spec.target, pipeline=pipe)
            await pipe.execute()

    try:
        return await timed_publish(spec, lambda x: broker.publish(x, channel=spec.target), many)
    finally:
        await broker.stop()
