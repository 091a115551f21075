"""Raw throughput of the Redis Pub/Sub backend (needs Redis on 127.0.0.1:6379).

    python bench/redis_pubsub.py [--events 50000] [--url redis://127.0.0.1:6379/0]

Prints three rates:

* publish: ``RedisProducer.send`` called concurrently (what ``App.emit_many`` does), each send
  confirmed by Redis' reply; sends are pipelined in batches;
* consume: the ``RedisConsumer`` reading a burst that ``redis-cli --pipe`` publishes from
  another process (the consumer's read path alone, first to last message);
* end to end: ``App.emit_many`` into an app whose handler validates ``Event[Model]``.

Pub/Sub is at-most-once, so each line also says how many events did not arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from contextlib import suppress
from urllib.parse import urlsplit

from pydantic import BaseModel
from redis.asyncio import Redis

from dispytch import App, Event, EventBase
from dispytch.redis import RedisConsumer, RedisProducer
from dispytch.routing import TopicPattern


class Body(BaseModel):
    n: int
    note: str


async def publish_rate(url: str, events: int) -> None:
    client = Redis.from_url(url)
    producer = RedisProducer(client)
    payload = b"x" * 200
    topic = f"bench_pub_{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    for offset in range(0, events, 10_000):
        count = min(10_000, events - offset)
        await asyncio.gather(*(producer.send(topic, payload) for _ in range(count)))
    took = time.perf_counter() - start
    print(f"publish (confirmed):  {events / took:>10,.0f} events/s")
    await producer.close()
    await client.aclose()


async def consume_rate(url: str, events: int) -> None:
    topic = f"bench_sub_{uuid.uuid4().hex[:8]}"
    sub = Redis.from_url(url)
    consumer = RedisConsumer(sub.pubsub(ignore_subscribe_messages=True), buffer_size=events)
    await consumer.start([TopicPattern.parse(topic)])
    received = 0
    first = last = 0.0

    async def drain() -> None:
        nonlocal received, first, last
        async for _ in consumer.listen():
            received += 1
            if received == 1:
                first = time.perf_counter()
            if received == events:
                break
        last = time.perf_counter()

    reader = asyncio.create_task(drain())
    # Another process publishes, so this process only reads (redis-cli --pipe, a plain loop).
    command = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$200\r\n%s\r\n" % (
        len(topic),
        topic.encode(),
        b"x" * 200,
    )
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", str(parts.port or 6379)
    proc = await asyncio.create_subprocess_exec(
        "redis-cli",
        "-h",
        host,
        "-p",
        port,
        "--pipe",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    await proc.communicate(command * events)
    try:
        await asyncio.wait_for(reader, 30)
    except TimeoutError:
        last = time.perf_counter()
    rate = (received - 1) / (last - first) if received > 1 else 0.0
    print(f"consume (read path):  {rate:>10,.0f} events/s, lost {events - received}")
    await consumer.close()
    await sub.aclose()


async def end_to_end(url: str, events: int) -> None:
    topic = f"bench_e2e_{uuid.uuid4().hex[:8]}"
    app = App(url, ordering="none", concurrency=256)
    done = asyncio.Event()
    count = 0

    @app.handler(topic=topic, event="bench")
    async def handle(event: Event[Body]) -> None:
        nonlocal count
        count += 1
        if count == events:
            done.set()

    class Bench(EventBase):
        __topic__ = topic
        __event_type__ = "bench"
        n: int
        note: str

    await app.start()
    batch = [Bench(n=i, note="y" * 100) for i in range(events)]
    start = time.perf_counter()
    for offset in range(0, events, 5000):
        await app.emit_many(batch[offset : offset + 5000])
    with suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 60)
    took = time.perf_counter() - start
    print(f"end to end (App):     {count / took:>10,.0f} events/s, lost {events - count}")
    await app.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    print(f"events: {args.events}")
    await publish_rate(args.url, args.events)
    await consume_rate(args.url, args.events)
    await end_to_end(args.url, args.events)


if __name__ == "__main__":
    asyncio.run(main())
