"""What a worker-thread hop costs: sync (``def``) handlers and dependencies versus async ones.

    python bench/sync_handlers.py [--events 20000] [--repeats 5] [--concurrency 64]

Each variant drains the same backlog of ~200-byte JSON events through an EventListener on the
in-memory backend (decode, route, validate ``Event[Body]``, the handler, ack), as
``bench/overhead.py`` does; only the handler and its dependency change. Printed: µs of wall time
and of process CPU time (every thread) per event, medians of the repeats with the variants
interleaved, and their difference to the async handler without dependencies: the cost of the
hop(s). On a loaded machine trust the CPU column more.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Annotated

from overhead import Body, payloads

from dispytch import Dependency, Event, EventListener
from dispytch.memory import MemoryBroker, MemoryConsumer


def counter() -> list[int]:
    return COUNT


def counter_gen() -> Iterator[list[int]]:
    yield COUNT


async def counter_async() -> list[int]:
    return COUNT


COUNT = [0]


def register(listener: EventListener, variant: str, done: Callable[[], None]) -> None:
    on = listener.handler(topic="bench", event="user_registered")
    if variant == "async handler":

        @on
        async def a(event: Event[Body]) -> None:
            done()

    elif variant == "def handler (1 hop)":

        @on
        def b(event: Event[Body]) -> None:
            done()

    elif variant == "async handler + async dep":

        @on
        async def c(event: Event[Body], n: Annotated[list[int], Dependency(counter_async)]) -> None:
            done()

    elif variant == "async handler + def dep (1 hop)":

        @on
        async def d(event: Event[Body], n: Annotated[list[int], Dependency(counter)]) -> None:
            done()

    elif variant == "async handler + def dep, run_in_thread=False":

        @on
        async def e(
            event: Event[Body],
            n: Annotated[list[int], Dependency(counter, run_in_thread=False)],
        ) -> None:
            done()

    elif variant == "def handler + generator dep (1 hop)":

        @on
        def f(event: Event[Body], n: Annotated[list[int], Dependency(counter_gen)]) -> None:
            done()

    elif variant == "async handler + generator dep (2 hops)":

        @on
        async def g(event: Event[Body], n: Annotated[list[int], Dependency(counter_gen)]) -> None:
            done()

    else:
        raise ValueError(variant)


VARIANTS = [
    "async handler",
    "def handler (1 hop)",
    "async handler + async dep",
    "async handler + def dep (1 hop)",
    "async handler + def dep, run_in_thread=False",
    "def handler + generator dep (1 hop)",
    "async handler + generator dep (2 hops)",
]


async def drain(data: list[bytes], variant: str, concurrency: int) -> tuple[float, float]:
    broker = MemoryBroker()
    for p in data:
        broker.publish("bench", p)
    listener = EventListener(MemoryConsumer(broker, "bench"), concurrency=concurrency)
    finished = asyncio.Event()
    loop = asyncio.get_running_loop()
    seen = [0]

    def done() -> None:  # called from worker threads too
        seen[0] += 1
        if seen[0] == len(data):
            loop.call_soon_threadsafe(finished.set)

    register(listener, variant, done)
    await listener.subscribe()
    start, cpu = time.perf_counter(), time.process_time()
    task = asyncio.create_task(listener.listen())
    await finished.wait()
    await broker.wait_idle(60)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    listener.stop()
    await task
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    data = payloads(args.events)
    runs: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:  # interleaved, so drift hits every variant alike
            runs[variant].append(asyncio.run(drain(data, variant, args.concurrency)))

    def per_event(times: list[tuple[float, float]], i: int) -> float:
        return statistics.median(t[i] for t in times) / args.events * 1e6

    wall, cpu = per_event(runs["async handler"], 0), per_event(runs["async handler"], 1)
    print(f"events: {args.events}, repeats: {args.repeats}, concurrency: {args.concurrency}")
    print(f"{'variant':48s} {'wall us/event':>21s} {'CPU us/event':>21s}")
    for variant, times in runs.items():
        w, c = per_event(times, 0), per_event(times, 1)
        print(f"{variant:48s} {w:8.2f} ({w - wall:+7.2f}) {c:10.2f} ({c - cpu:+7.2f})")


if __name__ == "__main__":
    main()
