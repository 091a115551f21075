"""How fast ``dispytch dlq replay`` (``DeadLetterStore.replay``) empties a dead-letter destination.

    python bench/dlq_replay.py [--backends memory,redis_streams,nats,kafka,rabbitmq]
                               [--letters 5000]
                               [--batch 100] [--repeats 3]

Per backend it stores ``--letters`` dead letters (~200-byte envelopes with failure headers)
straight into the topic's dead-letter destination, then times:

* list: ``store.list()`` of that topic (reads every dead letter once);
* replay: ``store.replay()`` back to the original topic with ``--batch`` per round trip, each
  batch confirmed by the broker and then removed from the dead-letter destination.

Prints events/s (median of ``--repeats``). Everything it creates is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

from dispytch.backend import Backend, backend_from_url
from dispytch.dlq import Selection
from dispytch.emitter.producer import Outgoing

URLS = {
    "memory": "memory://bench-dlq",
    "redis_streams": "redis+streams://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
    "kafka": "kafka://127.0.0.1:9092",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
}


def destination(backend: str, topic: str) -> str:
    return f"dispytch_dlq.{topic}" if backend == "nats" else f"{topic}.dlq"


def payload(n: int) -> bytes:
    body = {"user": {"id": n, "email": f"user{n}@example.com"}, "seq": n, "key": f"k{n % 97}"}
    envelope = {"id": str(uuid.uuid4()), "type": "placed", "body": body, "timestamp": 1}
    return json.dumps(envelope).encode()


async def fill(backend: Backend, name: str, topic: str, letters: int, group: str) -> None:
    headers = {
        "x-dispytch-reason": "handler",
        "x-dispytch-error-type": "ValueError",
        "x-dispytch-error-message": "bench",
        "x-dispytch-attempts": "1",
        "x-dispytch-original-topic": topic,
        "x-dispytch-failed-at": str(int(time.time() * 1000)),
    }
    if name == "rabbitmq":
        await fill_rabbitmq(topic, letters, group, headers)
        return
    producer = backend.producer()
    where = destination(name, topic)
    for start in range(0, letters, 1000):
        batch = [
            Outgoing(where, payload(n), headers=headers)
            for n in range(start, min(letters, start + 1000))
        ]
        errors = [e for e in await producer.send_many(batch) if e is not None]
        if errors:
            raise errors[0]


async def fill_rabbitmq(topic: str, letters: int, group: str, headers: dict[str, str]) -> None:
    """Dead letters straight into the group's queue, and a queue that keeps the replays."""
    import aio_pika

    from dispytch.rabbitmq.dead_letters import dead_letter_queue

    connection = await aio_pika.connect(URLS["rabbitmq"])
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            "dispytch", aio_pika.ExchangeType.TOPIC, durable=True
        )
        sink = await channel.declare_queue(f"bench-sink-{topic}", durable=True)
        await sink.bind(exchange, routing_key=topic)
        queue = await channel.declare_queue(dead_letter_queue(group), durable=True)
        for start in range(0, letters, 1000):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(payload(n), headers=headers),
                        routing_key=queue.name,  # type: ignore[arg-type]
                    )
                    for n in range(start, min(letters, start + 1000))
                )
            )


async def one_run(name: str, letters: int, batch: int) -> tuple[float, float]:
    run = uuid.uuid4().hex[:8]
    topic = f"bench_dlq_{run}"
    options: dict[str, Any] = {}
    if name == "nats":
        options = {"stream": f"bench_dlq_{run}", "subjects": [topic]}
    group = f"bench-dlq-{run}"
    backend = backend_from_url(URLS[name], **options)
    await backend.connect()
    try:
        await fill(backend, name, topic, letters, group)
        store = backend.dead_letter_store(group if name == "rabbitmq" else None)
        selection = Selection.build(topics=[topic])
        started = time.perf_counter()
        (summary,) = await store.list(selection)
        listed = time.perf_counter() - started
        assert summary.count == letters, summary
        started = time.perf_counter()
        report = await store.replay(selection, batch=batch)
        replayed = time.perf_counter() - started
        assert report.replayed == letters and not report.failed, report
        assert await store.count(selection) == 0
        return letters / listed, letters / replayed
    finally:
        await cleanup(backend, name, topic, run, group)
        await backend.close()


async def cleanup(backend: Backend, name: str, topic: str, run: str, group: str) -> None:
    if name == "redis_streams":
        client = backend.client  # type: ignore[attr-defined]
        await client.delete(topic, f"{topic}.dlq")
    elif name == "nats":
        js = backend.jetstream  # type: ignore[attr-defined]
        if js is not None:
            await js.delete_stream(f"bench_dlq_{run}")
    elif name == "kafka":
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
        await admin.start()
        try:
            await admin.delete_topics([topic, f"{topic}.dlq"])
        finally:
            await admin.close()
    elif name == "rabbitmq":
        import aio_pika

        from dispytch.rabbitmq.dead_letters import dead_letter_queue

        connection = await aio_pika.connect(URLS["rabbitmq"])
        async with connection:
            channel = await connection.channel()
            for queue in (f"bench-sink-{topic}", dead_letter_queue(group)):
                await channel.queue_delete(queue)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="memory,redis_streams,nats")
    parser.add_argument("--letters", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"dead letters per run: {args.letters}, batch {args.batch}, median of {args.repeats}")
    print("| backend | list (letters/s) | replay (events/s) |")
    print("|---|---:|---:|")
    for name in args.backends.split(","):
        rates = [await one_run(name, args.letters, args.batch) for _ in range(args.repeats)]
        listed = statistics.median(r[0] for r in rates)
        replayed = statistics.median(r[1] for r in rates)
        print(f"| {name} | {listed:,.0f} | {replayed:,.0f} |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
