"""Per-event overhead of Dispytch on the in-memory backend versus a plain loop.

    python bench/overhead.py [--events 50000] [--repeats 5]

Both variants drain the same backlog of ~200-byte JSON events. The plain loop decodes each
event with ``json.loads`` and validates its body with pydantic; Dispytch does the same through
its listener: decode, route, validate ``Event[Model]``, resolve one dependency (a cheap sync
function, kept on the event loop with ``run_in_thread=False``), call the handler, ack.
Printed: µs/event (median of the repeats) and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from typing import Annotated

import pydantic
from pydantic import BaseModel

import dispytch
from dispytch import Dependency, Event, EventBase, EventListener
from dispytch.memory import MemoryBroker, MemoryConsumer
from dispytch.serialization.json import JSONSerializer


class User(BaseModel):
    id: str
    email: str
    name: str


class Body(BaseModel):
    user: User
    timestamp: int


class UserRegistered(EventBase):
    __topic__ = "bench"
    __event_type__ = "user_registered"
    user: User
    timestamp: int


def payloads(n: int) -> list[bytes]:
    serializer = JSONSerializer()
    user = User(id="7f1c0c1e-2b1d-4a51-9a62-0d5b3f3f0001", email="bench@example.com", name="Bench")
    return [
        serializer.serialize(UserRegistered(user=user, timestamp=1_700_000_000 + i).envelope())
        for i in range(n)
    ]


def get_counter() -> list[int]:
    return COUNTER


COUNTER: list[int] = [0]


async def plain_loop(data: list[bytes]) -> float:
    broker = MemoryBroker()
    for p in data:
        broker.publish("bench", p)
    consumer = MemoryConsumer(broker, "plain", topics=["bench"])
    counter = [0]
    start = time.perf_counter()
    stream = consumer.listen()
    for _ in range(len(data)):
        message = await anext(stream)
        envelope = json.loads(message.payload)
        if envelope["type"] == "user_registered":
            Body.model_validate(envelope["body"])
            counter[0] += 1
        await consumer.ack(message)
    elapsed = time.perf_counter() - start
    await stream.aclose()
    return elapsed


async def dispytch_loop(data: list[bytes], concurrency: int) -> float:
    broker = MemoryBroker()
    for p in data:
        broker.publish("bench", p)
    consumer = MemoryConsumer(broker, "dispytch", topics=["bench"])
    listener = EventListener(consumer, concurrency=concurrency)
    done = asyncio.Event()
    seen = [0]
    total = len(data)

    @listener.handler(topic="bench", event="user_registered")
    async def handle(
        event: Event[Body],
        counter: Annotated[list[int], Dependency(get_counter, run_in_thread=False)],
    ) -> None:
        counter[0] += 1
        seen[0] += 1
        if seen[0] == total:
            done.set()

    start = time.perf_counter()
    task = asyncio.create_task(listener.listen())
    await done.wait()
    await broker.wait_idle(60)
    elapsed = time.perf_counter() - start
    listener.stop()
    await task
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    data = payloads(args.events)
    plain: list[float] = []
    framework: list[float] = []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        plain.append(asyncio.run(plain_loop(data)))
        framework.append(asyncio.run(dispytch_loop(data, args.concurrency)))
    us_plain = statistics.median(plain) / args.events * 1e6
    us_fw = statistics.median(framework) / args.events * 1e6
    print(
        f"machine: {platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}, dispytch {dispytch.__version__}, "
        f"pydantic {pydantic.VERSION}"
    )
    print(
        f"events: {args.events}, payload: {len(data[0])} bytes, repeats: {args.repeats}, "
        f"concurrency: {args.concurrency}"
    )
    print(
        f"plain loop (decode+validate+ack):      {us_plain:7.2f} us/event "
        f"({1e6 / us_plain:,.0f} events/s)"
    )
    print(
        f"dispytch (decode+validate+dep+ack):    {us_fw:7.2f} us/event "
        f"({1e6 / us_fw:,.0f} events/s)"
    )
    print(f"ratio dispytch/plain: {us_fw / us_plain:.2f}x")


if __name__ == "__main__":
    main()
