"""Throughput of the Redis Streams backend (needs Redis on 127.0.0.1:6379).

    python bench/redis_streams.py [--events 20000] [--url redis+streams://127.0.0.1:6379/0]

Prints three rates:

* append: ``RedisStreamsProducer.send`` called concurrently (what ``App.emit_many`` does), each
  send confirmed by XADD's reply; sends are pipelined in batches;
* drain (consumer): a ``RedisStreamsConsumer`` reading a backlog and acking every entry
  (acks batched); the time runs until XPENDING is back to 0, so every ack reached Redis;
* drain (app): an app whose handler validates ``Event[Model]``, same backlog, same end condition.

The streams are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from pydantic import BaseModel
from redis.asyncio import Redis

from dispytch import App, Event, EventBase
from dispytch.redis.streams import RedisStreamsConsumer, RedisStreamsProducer
from dispytch.redis.streams.backend import client_url
from dispytch.serialization.json import JSONSerializer


class Body(BaseModel):
    n: int
    email: str


def event_class(topic: str) -> type[EventBase]:
    class Placed(EventBase):
        __topic__ = topic
        __event_type__ = "placed"
        n: int
        email: str

    return Placed


async def fill(redis: Redis, topic: str, events: int) -> float:
    producer = RedisStreamsProducer(redis)
    serializer = JSONSerializer()
    placed = event_class(topic)
    payloads = [
        serializer.serialize(placed(n=i, email="bench@example.com").envelope())
        for i in range(events)
    ]
    started = time.perf_counter()
    await asyncio.gather(*(producer.send(topic, p) for p in payloads))
    return time.perf_counter() - started


async def until_acked(redis: Redis, topic: str, group: str) -> None:
    while True:
        if not int((await redis.xpending(topic, group))["pending"]):
            return
        await asyncio.sleep(0.001)


async def drain_consumer(redis: Redis, topic: str, events: int) -> float:
    group = "bench"
    consumer = RedisStreamsConsumer(redis, streams=[topic], group=group, prefetch=256)
    started = time.perf_counter()
    await consumer.start()
    seen = 0
    async for message in consumer.listen():
        await consumer.ack(message)
        seen += 1
        if seen == events:
            break
    await until_acked(redis, topic, group)
    elapsed = time.perf_counter() - started
    await consumer.close()
    return elapsed


async def drain_app(url: str, redis: Redis, topic: str, events: int) -> float:
    done = asyncio.Event()
    count = 0
    app = App(url, group="bench-app")

    @app.handler(topic=topic, event="placed")
    async def handle(event: Event[Body]) -> None:
        nonlocal count
        count += 1
        if count == events:
            done.set()

    started = time.perf_counter()
    await app.start()
    await done.wait()
    await until_acked(redis, topic, "bench-app")
    elapsed = time.perf_counter() - started
    await app.stop()
    return elapsed


async def main(url: str, events: int) -> None:
    redis = Redis.from_url(client_url(url))
    topic = f"bench_streams_{uuid.uuid4().hex[:8]}"
    try:
        took = await fill(redis, topic, events)
        print(f"append:            {events / took:>9,.0f} events/s ({events} in {took:.2f}s)")
        took = await drain_consumer(redis, topic, events)
        print(f"drain (consumer):  {events / took:>9,.0f} events/s ({events} in {took:.2f}s)")
        took = await drain_app(url, redis, topic, events)
        print(f"drain (app):       {events / took:>9,.0f} events/s ({events} in {took:.2f}s)")
    finally:
        await redis.delete(topic)
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--url", default="redis+streams://127.0.0.1:6379/0")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.events))
