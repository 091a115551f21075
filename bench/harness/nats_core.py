"""Core NATS: no backlog exists, so another process publishes while the variant consumes.

The worker subscribes (and flushes, so the server has the subscription), then starts a
separate Python process that publishes the N events with nats-py and flushes: only the
consumer's own CPU is measured. Core NATS is at-most-once: a subscriber whose pending queue
overflows loses events (nats-py reports a slow consumer), so every result says how many were
lost. This is the scenario of the issue's "NATS core (drain a backlog)" row.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats

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

URL = "nats+core://127.0.0.1:4222"
NAME = "nats_core"
#: bench/, so that the feeder process can import ``harness``.
_BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _server(url: str) -> str:
    return "nats://" + url.split("://", 1)[1]


class Setup:
    def __init__(self, url: str) -> None:
        self.url = url

    async def check(self) -> str | None:
        try:
            nc = await asyncio.wait_for(
                nats.connect(_server(self.url), max_reconnect_attempts=0), 5
            )
            await nc.close()
        except Exception as exc:
            return f"NATS does not answer ({type(exc).__name__})"
        return None

    async def prepare(self, scenario: str, specs: list[Spec]) -> None:
        for spec in specs:
            spec.target = unique(f"bench.{scenario}").replace("-", ".")
            spec.group = unique(f"bench-{spec.variant}")

    async def cleanup(self) -> None:
        return None  # subjects leave nothing behind


async def _feed(spec: Spec) -> None:
    """Publish the N events from another process (this module run with ``-m``)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [_BENCH_DIR, os.environ.get("PYTHONPATH")])),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harness.nats_core",
        _server(spec.url),
        spec.target,
        str(spec.events),
        env=env,
    )
    if await proc.wait() != 0:
        raise RuntimeError("the NATS feeder process failed")


async def _measure(spec: Spec, meter: Meter, start: Callable[[], Awaitable[None]]) -> None:
    await start()
    feeder = asyncio.create_task(_feed(spec))
    await meter.wait(idle_timeout=5)
    await feeder


async def consume_raw(spec: Spec) -> dict[str, Any]:
    """The plain loop: a subscription callback that does the work per message."""
    nc = await nats.connect(_server(spec.url))
    meter = Meter(spec.events)

    async def on_message(msg: Any) -> None:
        work(msg.data)
        meter.tick()

    async def start() -> None:
        await nc.subscribe(spec.target, queue=spec.group, cb=on_message)
        await nc.flush()

    try:
        await _measure(spec, meter, start)
    finally:
        await nc.close()
    return meter.result()


async def consume_dispytch(spec: Spec) -> dict[str, Any]:
    meter = Meter(spec.events)
    app = dispytch_side.consuming_app(spec, meter)
    try:
        await _measure(spec, meter, app.start)
    finally:
        await app.stop()
    return meter.result()


async def consume_faststream(spec: Spec) -> dict[str, Any]:
    from faststream.nats import NatsBroker

    broker = NatsBroker(_server(spec.url), logger=None)
    meter = Meter(spec.events)

    @broker.subscriber(spec.target, queue=spec.group)  # type: ignore[untyped-decorator]
    async def handle(event: Envelope) -> None:
        meter.tick()

    async def start() -> None:
        await broker.start()
        await broker._connection.flush()  # the subscription is on the server

    try:
        await _measure(spec, meter, start)
    finally:
        await broker.stop()
    return meter.result()


async def publish_raw(spec: Spec) -> dict[str, Any]:
    """Publish then flush (PING/PONG): the server has each event before the next one."""
    nc = await nats.connect(_server(spec.url))

    async def many(items: Sequence[dict[str, Any]]) -> None:
        for item in items:
            await nc.publish(spec.target, json.dumps(item).encode())
        await nc.flush()

    try:
        return await timed_publish(spec, lambda x: many([x]), many)
    finally:
        await nc.close()


async def publish_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.publish(spec)


async def publish_faststream(spec: Spec) -> dict[str, Any]:
    """FastStream's core publish does not wait for the server: a flush confirms, as above."""
    from faststream.nats import NatsBroker

    broker = NatsBroker(_server(spec.url), logger=None)
    await broker.start()

    async def many(items: Sequence[dict[str, Any]]) -> None:
        for item in items:
            await broker.publish(item, spec.target)
        await broker._connection.flush()

    try:
        return await timed_publish(spec, lambda x: many([x]), many)
    finally:
        await broker.stop()


async def _publish_all(server: str, subject: str, n: int) -> None:
    nc = await nats.connect(server)
    try:
        for data in payloads(n):
            await nc.publish(subject, data)
        await nc.flush(timeout=60)
    finally:
        await nc.close()


if __name__ == "__main__":  # the feeder process: python -m harness.nats_core URL SUBJECT N
    asyncio.run(_publish_all(sys.argv[1], sys.argv[2], int(sys.argv[3])))
