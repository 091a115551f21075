#!/usr/bin/env python3
"""Smoke test for the local brokers started by scripts/brokers.sh.

Produces and consumes one msgpack-encoded message through each broker with the
Python clients the project uses:

    kafka     aiokafka   (admin create topic with 3 partitions, produce, group consume, commit;
                          plus one produce to an auto-created topic)
    rabbitmq  aio-pika   (publisher confirms + mandatory, consume + ack)
    redis     redis.asyncio pub/sub
    nats      nats-py JetStream (stream, publish with ack, pull consumer, ack)

Usage: python3 scripts/smoke_brokers.py [kafka rabbitmq redis nats]   (default: all)
Exits 0 when every selected check passed, 1 otherwise; bounded to ~60 s overall.
Addresses can be overridden with KAFKA_PORT, RABBITMQ_PORT, REDIS_PORT, NATS_PORT.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import sys
import time
import uuid

import msgpack

HOST = "127.0.0.1"
KAFKA = f"{HOST}:{os.environ.get('KAFKA_PORT', '9092')}"
AMQP = f"amqp://guest:guest@{HOST}:{os.environ.get('RABBITMQ_PORT', '5672')}/"
REDIS = f"redis://{HOST}:{os.environ.get('REDIS_PORT', '6379')}/0"
NATS = f"nats://{HOST}:{os.environ.get('NATS_PORT', '4222')}"

PER_CHECK_TIMEOUT = 45.0
OVERALL_TIMEOUT = 55.0


def dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def payload(name: str) -> tuple[bytes, dict]:
    body = {"broker": name, "id": uuid.uuid4().hex, "n": 1}
    return msgpack.packb(body), body


async def check_kafka() -> str:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        # the controller needs a moment to elect leaders; wait until metadata lists 3 partitions
        for _ in range(100):
            desc = await admin.describe_topics([topic])
            parts = desc[0].get("partitions") or []
            if len(parts) == 3 and all(p.get("leader", -1) >= 0 for p in parts):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"topic {topic} not ready: {desc}")
    finally:
        await admin.close()

    raw, body = payload("kafka")
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        md = await producer.send_and_wait(topic, raw, key=b"k1")
        # auto.create.topics.enable=true: producing to an unknown topic creates it
        auto_topic = f"smoke-auto-{uuid.uuid4().hex[:8]}"
        await producer.send_and_wait(auto_topic, b"x")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA,
        group_id=f"smoke-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
        assert msgpack.unpackb(msg.value) == body, msg
        assert msg.partition == md.partition and msg.offset == md.offset
        await consumer.commit()
    finally:
        await consumer.stop()
    where = f"topic {topic} p{md.partition}@{md.offset}"
    return f"aiokafka {dist_version('aiokafka')}, {where}, auto-create ok"


async def check_rabbitmq() -> str:
    import aio_pika

    conn = await aio_pika.connect_robust(AMQP, timeout=10)
    try:
        ch = await conn.channel(publisher_confirms=True)
        qname = f"smoke-{uuid.uuid4().hex[:8]}"
        q = await ch.declare_queue(qname, exclusive=True, auto_delete=True)
        raw, body = payload("rabbitmq")
        await ch.default_exchange.publish(
            aio_pika.Message(raw, content_type="application/msgpack"),
            routing_key=q.name,
            mandatory=True,
        )
        got = asyncio.get_running_loop().create_future()

        async def on_msg(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            await m.ack()
            if not got.done():
                got.set_result(m.body)

        tag = await q.consume(on_msg)
        value = await asyncio.wait_for(got, 15)
        await q.cancel(tag)
        assert msgpack.unpackb(value) == body
        server = conn.transport.connection.server_properties if conn.transport else {}
        version = server.get("version", b"?")
        version = version.decode() if isinstance(version, bytes) else version
    finally:
        await conn.close()
    return f"aio-pika {dist_version('aio-pika')}, server RabbitMQ {version}, queue {q.name}"


async def check_redis() -> str:
    import redis.asyncio as aioredis

    r = aioredis.from_url(REDIS)
    try:
        channel = f"smoke-{uuid.uuid4().hex[:8]}"
        ps = r.pubsub()
        await ps.subscribe(channel)
        # first message is the subscribe confirmation
        confirm = await ps.get_message(timeout=5)
        assert confirm and confirm["type"] == "subscribe", confirm
        raw, body = payload("redis")
        receivers = await r.publish(channel, raw)
        assert receivers == 1, receivers
        msg = None
        deadline = time.monotonic() + 10
        while msg is None and time.monotonic() < deadline:
            msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1)
        assert msg is not None, "no pubsub message"
        assert msgpack.unpackb(msg["data"]) == body
        await ps.unsubscribe(channel)
        await ps.aclose()
        info = await r.info("server")
    finally:
        await r.aclose()
    server = f"server Redis {info['redis_version']}"
    return f"redis-py {dist_version('redis')}, {server}, channel {channel}"


async def check_nats() -> str:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(NATS, connect_timeout=5, max_reconnect_attempts=2)
    try:
        js = nc.jetstream()
        name = f"SMOKE_{uuid.uuid4().hex[:8]}"
        subject = f"smoke.{name.lower()}"
        await js.add_stream(StreamConfig(name=name, subjects=[subject]))
        try:
            raw, body = payload("nats")
            ack = await js.publish(subject, raw)
            assert ack.stream == name and ack.seq == 1, ack
            sub = await js.pull_subscribe(subject, durable="smoke")
            msgs = await sub.fetch(1, timeout=10)
            assert len(msgs) == 1
            assert msgpack.unpackb(msgs[0].data) == body
            await msgs[0].ack()
        finally:
            await js.delete_stream(name)
        v = nc.connected_server_version
        version = f"{v.major}.{v.minor}.{v.patch}"
    finally:
        await nc.close()
    server = f"server nats-server {version}"
    return f"nats-py {dist_version('nats-py')}, {server}, JetStream stream {name}"


CHECKS = {
    "kafka": check_kafka,
    "rabbitmq": check_rabbitmq,
    "redis": check_redis,
    "nats": check_nats,
}


async def run_one(name: str) -> tuple[str, bool, str, float]:
    t0 = time.monotonic()
    try:
        detail = await asyncio.wait_for(CHECKS[name](), PER_CHECK_TIMEOUT)
        return name, True, detail, time.monotonic() - t0
    except Exception as exc:  # report everything, including timeouts
        return name, False, f"{type(exc).__name__}: {exc}", time.monotonic() - t0


async def main(names: list[str]) -> int:
    t0 = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*(run_one(n) for n in names)), OVERALL_TIMEOUT)
    failed = 0
    for name, ok, detail, secs in results:
        failed += not ok
        print(f"{'OK  ' if ok else 'FAIL'} {name:<9} {secs:5.2f}s  {detail}")
    print(f"smoke: took {time.monotonic() - t0:.2f}s")
    print(f"smoke: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    # aiokafka logs expected transients (auto-created topic not yet in metadata, coordinator
    # not yet available on a fresh broker) as warnings; only errors are interesting here.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    # Client libraries also log connection errors with tracebacks; the FAIL line reports them.
    for noisy in ("aiokafka", "aiormq", "aio_pika", "nats"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    selected = sys.argv[1:] or list(CHECKS)
    unknown = [n for n in selected if n not in CHECKS]
    if unknown:
        print(f"unknown broker(s): {unknown}; expected some of {list(CHECKS)}", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(asyncio.run(main(selected)))
    except TimeoutError:
        print(f"smoke: FAILED, overall timeout {OVERALL_TIMEOUT}s", file=sys.stderr)
        sys.exit(1)
