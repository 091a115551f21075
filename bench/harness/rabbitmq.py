"""RabbitMQ: durable classic queues filled through the ``dispytch`` topic exchange.

Every run drains its own queue (all of one repeat's queues are bound to one routing key and
filled by one pass of confirmed publishes); every publish run emits to a routing key of its own,
bound to one capped sink queue. Dispytch uses ``queue_type="classic"`` so that all
three variants consume the same kind of queue, with a prefetch of ``--concurrency``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika

from harness import dispytch_side
from harness.common import (
    Envelope,
    Meter,
    OrderedWork,
    Spec,
    drive,
    payloads,
    timed_publish,
    unique,
    work,
)

URL = "amqp://guest:guest@127.0.0.1:5672/"
NAME = "rabbitmq"
EXCHANGE = "dispytch"
KEY_HEADER = "x-dispytch-key"
CLASSIC = {"x-queue-type": "classic"}


class Setup:
    def __init__(self, url: str) -> None:
        self.url = url
        self.queues: list[str] = []

    async def check(self) -> str | None:
        try:
            connection = await asyncio.wait_for(aio_pika.connect(self.url), 10)
        except Exception as exc:
            return f"RabbitMQ does not answer ({type(exc).__name__})"
        await connection.close()
        return None

    async def prepare(self, scenario: str, specs: list[Spec]) -> None:
        routing_key = unique(f"bench.{scenario}").replace("-", ".")
        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
            arguments: dict[str, Any] = dict(CLASSIC)
            if scenario == "publish":
                # A sink that keeps the last 1,000 only: emits need a bound queue (mandatory).
                arguments.update({"x-max-length": 1000, "x-overflow": "drop-head"})
            for spec in specs:
                queue_name = unique(f"bench-{spec.variant}")
                queue = await channel.declare_queue(queue_name, durable=True, arguments=arguments)
                # Emits get a sink each (a shared key would store every emit once per variant).
                key = f"{routing_key}.{spec.variant}" if scenario == "publish" else routing_key
                await queue.bind(exchange, key)
                self.queues.append(queue_name)
                spec.group = queue_name
                spec.target = key
            if scenario != "publish":
                await _fill(exchange, routing_key, max(s.events for s in specs), scenario == "io")
        finally:
            await connection.close()

    async def cleanup(self) -> None:
        if not self.queues:
            return
        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel()
            for name in self.queues:
                await channel.queue_delete(name)
        finally:
            await connection.close()
        self.queues = []


async def _fill(exchange: Any, routing_key: str, n: int, keyed: bool) -> None:
    data = payloads(n)
    for i in range(0, n, 2000):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        data[seq],
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        headers={KEY_HEADER: f"k{seq % 1000:04d}"} if keyed else None,
                    ),
                    routing_key,
                )
                for seq in range(i, min(i + 2000, n))
            )
        )


# -- workers ------------------------------------------------------------------------------------


async def consume_raw(spec: Spec) -> dict[str, Any]:
    """The naive loop: prefetch ``concurrency``, one message at a time, one ack each."""
    connection = await aio_pika.connect(spec.url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=int(spec.options.get("concurrency", 100)))
    queue = await channel.get_queue(spec.group, ensure=True)
    meter = Meter(spec.events)

    async def loop() -> None:
        async with queue.iterator() as messages:
            async for message in messages:
                work(message.body)
                await message.ack()
                meter.tick()
                if meter.done.is_set():
                    return

    return await drive(meter, loop(), connection.close)


async def consume_rawbatch(spec: Spec) -> dict[str, Any]:
    """A hand-tuned loop: one ``basic.ack(multiple=True)`` per 50 messages (and when idle)."""
    connection = await aio_pika.connect(spec.url)
    channel = await connection.channel()
    prefetch = int(spec.options.get("concurrency", 100))
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.get_queue(spec.group, ensure=True)
    meter = Meter(spec.events)
    every = max(prefetch // 2, 1)

    async def loop() -> None:
        pending = 0
        async with queue.iterator() as messages:
            async for message in messages:
                work(message.body)
                pending += 1
                meter.tick()
                if pending >= every or meter.done.is_set() or messages._queue.empty():
                    await message.ack(multiple=True)
                    pending = 0
                if meter.done.is_set():
                    return

    return await drive(meter, loop(), connection.close)


async def consume_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.consume(spec, queue_type="classic")


def _faststream_subscriber(spec: Spec, prefetch: int | None) -> tuple[Any, Any]:
    from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

    broker = RabbitBroker(spec.url, logger=None)
    subscriber = broker.subscriber(
        RabbitQueue(spec.group, declare=False),
        **({} if prefetch is None else {"channel": Channel(prefetch_count=prefetch)}),
    )
    return broker, subscriber


async def consume_faststream(spec: Spec) -> dict[str, Any]:
    return await _faststream_consume(spec, int(spec.options.get("concurrency", 100)))


async def consume_faststream_defaults(spec: Spec) -> dict[str, Any]:
    """FastStream as it comes: its default channel has no prefetch limit (the broker pushes
    the whole backlog into the client's memory), and its default AckPolicy.REJECT_ON_ERROR
    drops a message whose handler failed (rejected without requeue, no dead letter)."""
    return await _faststream_consume(spec, None)


async def _faststream_consume(spec: Spec, prefetch: int | None) -> dict[str, Any]:
    broker, subscriber = _faststream_subscriber(spec, prefetch)
    meter = Meter(spec.events)

    @subscriber  # type: ignore[untyped-decorator]
    async def handle(event: Envelope) -> None:
        meter.tick()

    await broker.start()
    try:
        await meter.wait()
    finally:
        await broker.stop()
    return meter.result()


async def publish_raw(spec: Spec) -> dict[str, Any]:
    connection = await aio_pika.connect(spec.url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(EXCHANGE)

    def publish(item: dict[str, Any]) -> Any:
        message = aio_pika.Message(
            json.dumps(item).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        return exchange.publish(message, spec.target, mandatory=True)

    try:
        return await timed_publish(
            spec, publish, lambda items: asyncio.gather(*(publish(x) for x in items))
        )
    finally:
        await connection.close()


async def publish_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.publish(spec, queue_type="classic")


async def publish_faststream(spec: Spec) -> dict[str, Any]:
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange

    broker = RabbitBroker(spec.url, logger=None)
    exchange = RabbitExchange(EXCHANGE, type=ExchangeType.TOPIC, durable=True)
    await broker.start()

    def publish(item: dict[str, Any]) -> Any:
        return broker.publish(
            item, exchange=exchange, routing_key=spec.target, mandatory=True, persist=True
        )

    try:
        # No batch API for RabbitMQ in FastStream: concurrent publishes.
        return await timed_publish(
            spec, publish, lambda items: asyncio.gather(*(publish(x) for x in items))
        )
    finally:
        await broker.stop()


async def io_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.io_ordered(spec, queue_type="classic")


async def io_faststream(spec: Spec) -> dict[str, Any]:
    """FastStream's ordered configuration: one consumer on one queue, prefetch 1."""
    broker, subscriber = _faststream_subscriber(spec, 1)
    meter = Meter(spec.events)
    sleep = float(spec.options.get("sleep_ms", 10)) / 1000
    work = OrderedWork(meter, sleep)

    @subscriber  # type: ignore[untyped-decorator]
    async def handle(event: Envelope) -> None:
        await work.handle(event.body.key, event.body.seq)

    await broker.start()
    try:
        await meter.wait(idle_timeout=30)
    finally:
        await broker.stop()
    return work.result()


async def memory_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.memory(spec, queue_type="classic")
