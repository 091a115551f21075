"""Kafka: a backlog topic with one partition, drained by aiokafka / Dispytch / FastStream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

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

URL = "kafka://127.0.0.1:9092"
NAME = "kafka"
#: Variants that commit once per record run at a few hundred events/s here: they drain only
#: the first ``--capped-events`` records of the backlog (their rate is flat, so it is the same).
CAPPED = {("consume", "raw"), ("consume", "faststream")}


def servers(url: str) -> str:
    return url.split("://", 1)[1]


class Setup:
    """Orchestrator side: topics and backlogs, created once per scenario, deleted at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.topics: list[str] = []
        self.backlogs: dict[str, str] = {}

    async def check(self) -> str | None:
        admin = AIOKafkaAdminClient(bootstrap_servers=servers(self.url), request_timeout_ms=5000)
        try:
            await asyncio.wait_for(admin.start(), 10)
            await admin.list_topics()
        except Exception as exc:
            return f"Kafka at {servers(self.url)} does not answer ({type(exc).__name__})"
        finally:
            await admin.close()
        return None

    async def _topic(self, prefix: str, partitions: int = 1) -> str:
        name = unique(prefix)
        admin = AIOKafkaAdminClient(bootstrap_servers=servers(self.url))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            await admin.close()
        self.topics.append(name)
        return name

    async def _fill(self, topic: str, n: int, keyed: bool = False) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=servers(self.url), linger_ms=5, max_batch_size=512 * 1024
        )
        await producer.start()
        try:
            data = payloads(n)
            for i in range(0, n, 5000):
                futures = []
                for seq in range(i, min(i + 5000, n)):
                    key = f"k{seq % 1000:04d}".encode() if keyed else None
                    futures.append(await producer.send(topic, data[seq], key=key))
                await asyncio.gather(*futures)
        finally:
            await producer.stop()

    async def prepare(self, scenario: str, specs: list[Spec]) -> None:
        if scenario == "publish":
            topic = self.backlogs.get("publish") or await self._topic("bench-pub")
            self.backlogs["publish"] = topic
        else:
            if scenario not in self.backlogs:
                topic = await self._topic(f"bench-{scenario}")
                size = max(s.events for s in specs)
                await self._fill(topic, size, keyed=scenario == "io")
                self.backlogs[scenario] = topic
            topic = self.backlogs[scenario]
        for spec in specs:
            spec.target = topic
            spec.group = unique(f"bench-{spec.variant}")

    async def cleanup(self) -> None:
        if not self.topics:
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=servers(self.url))
        await admin.start()
        try:
            await admin.delete_topics(self.topics)
        finally:
            await admin.close()
        self.topics = []


# -- workers ------------------------------------------------------------------------------------


async def consume_raw(spec: Spec) -> dict[str, Any]:
    """The naive loop: one record at a time, one commit per record after the work."""
    consumer = AIOKafkaConsumer(
        spec.target,
        bootstrap_servers=servers(spec.url),
        group_id=spec.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    meter = Meter(spec.events)

    async def loop() -> None:
        async for record in consumer:
            work(record.value)
            await consumer.commit()
            meter.tick()
            if meter.done.is_set():
                return

    return await drive(meter, loop(), consumer.stop)


async def consume_rawbatch(spec: Spec) -> dict[str, Any]:
    """A hand-tuned loop: ``getmany`` up to 500 records, work, one commit per batch."""
    consumer = AIOKafkaConsumer(
        spec.target,
        bootstrap_servers=servers(spec.url),
        group_id=spec.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    meter = Meter(spec.events)

    async def loop() -> None:
        while not meter.done.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for records in batches.values():
                for record in records:
                    work(record.value)
                    meter.tick()
            if batches:
                await consumer.commit()

    return await drive(meter, loop(), consumer.stop)


async def consume_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.consume(spec)


def _faststream_broker(spec: Spec) -> Any:
    from faststream.kafka import KafkaBroker

    # logger=None: FastStream's per-message INFO logging off (the most favourable setting).
    return KafkaBroker(servers(spec.url), logger=None)


async def consume_faststream(spec: Spec) -> dict[str, Any]:
    from faststream import AckPolicy

    # AckPolicy.ACK: commit after the handler, the same contract as the other two (FastStream's
    # Kafka default, ACK_FIRST, auto-commits before handling).
    return await _faststream_consume(spec, ack_policy=AckPolicy.ACK)


async def consume_faststream_defaults(spec: Spec) -> dict[str, Any]:
    """FastStream as it comes: AckPolicy.ACK_FIRST, aiokafka's periodic auto-commit, which
    commits what was fetched whether it was handled or not (at most once: a crash loses it)."""
    return await _faststream_consume(spec)


async def _faststream_consume(spec: Spec, **options: Any) -> dict[str, Any]:
    broker = _faststream_broker(spec)
    meter = Meter(spec.events)

    @broker.subscriber(  # type: ignore[untyped-decorator]
        spec.target, group_id=spec.group, auto_offset_reset="earliest", **options
    )
    async def handle(event: Envelope) -> None:
        meter.tick()

    await broker.start()
    try:
        await meter.wait()
    finally:
        await broker.stop()
    policy = options.get("ack_policy")
    return meter.result(ack_policy=policy.name if policy is not None else "default (ACK_FIRST)")


async def publish_raw(spec: Spec) -> dict[str, Any]:
    producer = AIOKafkaProducer(
        bootstrap_servers=servers(spec.url), acks="all", enable_idempotence=True
    )
    await producer.start()

    async def many(items: Sequence[dict[str, Any]]) -> None:
        futures = [await producer.send(spec.target, json.dumps(x).encode()) for x in items]
        await asyncio.gather(*futures)

    try:
        return await timed_publish(
            spec, lambda x: producer.send_and_wait(spec.target, json.dumps(x).encode()), many
        )
    finally:
        await producer.stop()


async def publish_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.publish(spec)


async def publish_faststream(spec: Spec) -> dict[str, Any]:
    from faststream.kafka import KafkaBroker

    broker = KafkaBroker(
        servers(spec.url),
        logger=None,
        acks="all",
        enable_idempotence=True,
        max_batch_size=1024 * 1024,  # publish_batch sends one batch; the default holds ~70
    )
    await broker.start()
    try:
        return await timed_publish(
            spec,
            lambda x: broker.publish(x, topic=spec.target),
            lambda items: broker.publish_batch(*items, topic=spec.target),
        )
    finally:
        await broker.stop()


async def io_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.io_ordered(spec)


async def io_faststream(spec: Spec) -> dict[str, Any]:
    """FastStream's ordered configuration: one subscriber, one partition, one at a time."""
    from faststream import AckPolicy

    broker = _faststream_broker(spec)
    meter = Meter(spec.events)
    sleep = float(spec.options.get("sleep_ms", 10)) / 1000
    work = OrderedWork(meter, sleep)

    @broker.subscriber(  # type: ignore[untyped-decorator]
        spec.target,
        group_id=spec.group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
    )
    async def handle(event: Envelope) -> None:
        await work.handle(event.body.key, event.body.seq)

    await broker.start()
    try:
        await meter.wait(idle_timeout=30)
    finally:
        await broker.stop()
    return work.result()


async def memory_dispytch(spec: Spec) -> dict[str, Any]:
    return await dispytch_side.memory(spec)
