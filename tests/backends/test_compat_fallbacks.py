"""Every backend on the fallbacks of its ``_compat`` module, against the live brokers.

The fast paths read broker clients' private state; :func:`tests.fallbacks.force_fallbacks` makes
every such read find nothing, as a client release that changed its internals would. The
delivery contract must still hold: every emit returns only once the broker confirmed it (or
raises), and what was emitted is consumed. ``pytest --compat-fallbacks`` runs the conformance
suite the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dispytch import App, Event, EventBase
from dispytch.errors import EmitError
from tests.fallbacks import force_fallbacks
from tests.helpers import require_broker, wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def fallbacks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    yield force_fallbacks(monkeypatch)


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


def _event(topic: str) -> type[EventBase]:
    class Numbered(EventBase):
        __topic__ = topic
        __event_type__ = "numbered"
        n: int

    return Numbered


async def _round_trip(app: App, topic: str, count: int = 40) -> list[int]:
    """Emit ``count`` events (one by one, then a batch), consume them all."""
    got: list[int] = []

    @app.handler(topic=topic, event="numbered")
    async def handle(event: Event[dict[str, Any]]) -> None:
        got.append(event.body["n"])

    Numbered = _event(topic)
    await app.start()
    half = count // 2
    for n in range(half):
        await app.emit(Numbered(n=n))
    await app.emit_many(Numbered(n=n) for n in range(half, count))
    await wait_until(lambda: len(got) >= count, timeout=30, what=f"{count} events")
    return got


# -- Kafka --------------------------------------------------------------------------------------


async def test_kafka_on_every_fallback(fallbacks: list[str], uid: str) -> None:
    require_broker("kafka", 9092)
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.partitioner import DefaultPartitioner

    from dispytch.kafka import KafkaEventConfig

    topic = f"kfb_{uid}"
    admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    app = App("kafka://127.0.0.1:9092", group=f"g_{uid}")
    try:
        got = await _round_trip(app, topic)
        producer = app.backend.producer()
        assert producer._partitioner is None  # the fallback: the client partitions
        Numbered = _event(topic)
        keyed = [
            Numbered(n=100 + n, __backend_config__=KafkaEventConfig(partition_key=f"k{n % 4}"))
            for n in range(32)
        ]
        await app.emit_many(keyed)  # confirmed: readable at once below
        await wait_until(lambda: len(got) >= 72, timeout=30, what="the keyed events")
        with pytest.raises(EmitError):
            await app.emit(Numbered(n=-1, __backend_config__=KafkaEventConfig(partition=7)))
    finally:
        await app.stop()
    assert sorted(got) == [*range(40), *range(100, 132)]
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers="127.0.0.1:9092", auto_offset_reset="earliest"
    )
    await reader.start()
    try:
        ends = await reader.end_offsets([TopicPartition(topic, p) for p in range(3)])
        assert sum(ends.values()) == 72
        records: list[Any] = []
        while len(records) < 72:
            for batch in (await reader.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await reader.stop()
    partitioner = DefaultPartitioner()
    for record in records:
        if record.key is not None:  # where the client's send would put it
            assert record.partition == partitioner(record.key, [0, 1, 2], [0, 1, 2])


# -- RabbitMQ -----------------------------------------------------------------------------------


async def test_rabbitmq_on_every_fallback(fallbacks: list[str], uid: str) -> None:
    require_broker("rabbitmq", 5672)
    from dispytch.emitter.producer import Outgoing
    from dispytch.rabbitmq import _compat

    topic = f"rfb.{uid}"
    app = App(
        "amqp://guest:guest@127.0.0.1:5672/",
        group=f"g_{uid}",
        exchange=f"fb_{uid}",
        queue_arguments={"x-expires": 60_000},
    )
    try:
        got = await _round_trip(app, topic)
        producer = app.backend.producer()
        channel = await producer.default_exchange.channel.get_underlay_channel()  # type: ignore[attr-defined]
        assert _compat.ledger(channel) is None  # the fallback: aiormq's own basic_publish
        side = await producer.default_exchange.channel.declare_queue(  # type: ignore[attr-defined]
            f"side_{uid}", auto_delete=True
        )
        await side.bind(producer.default_exchange, routing_key=f"side.{uid}")
        # Each emit is confirmed (and routed) or raises: an unroutable one among routable ones.
        outcomes = await producer.send_many(
            [Outgoing(f"side.{uid}" if n != 3 else f"nobody.{uid}", b"x") for n in range(6)]
        )
        assert [type(o).__name__ if o else None for o in outcomes] == [
            None,
            None,
            None,
            "EmitError",
            None,
            None,
        ]
        with pytest.raises(EmitError, match="no queue is bound"):
            await app.emit(_event(f"nobody.{uid}")(n=0))
    finally:
        await app.stop()
    assert sorted(got) == list(range(40))


# -- NATS ---------------------------------------------------------------------------------------


async def test_jetstream_on_every_fallback(fallbacks: list[str], uid: str) -> None:
    require_broker("nats", 4222)
    from tests.backends.nats_streams import delete_streams

    url = "nats://127.0.0.1:4222"
    app = App(url, group=f"g_{uid}", stream=f"fb_{uid}", dead_letter_stream=f"fb_{uid}_dlq")
    try:
        got = await _round_trip(app, f"nfb.{uid}", count=200)
        with pytest.raises(EmitError):  # no stream captures it: no PubAck
            await app.emit(_event(f"nobody.{uid}")(n=0))
    finally:
        await app.stop()
        await delete_streams(url, f"fb_{uid}", f"fb_{uid}_dlq")
    assert sorted(got) == list(range(200))


async def test_core_nats_confirms_without_flush_pending(fallbacks: list[str], uid: str) -> None:
    require_broker("nats_core", 4222)
    from dispytch.nats import _compat
    from tests.backends.nats_streams import delete_streams

    url = "nats+core://127.0.0.1:4222"
    app = App(url, group=f"g_{uid}", dead_letter_stream=f"fb_{uid}_dlq")
    try:
        got = await _round_trip(app, f"cfb.{uid}", count=200)
        connection = app.backend.connection  # type: ignore[attr-defined]
        assert _compat.private(connection, "_flush_pending") is None  # the fallback
        # ...and the subscriptions deliver through nats-py's documented callback
        (consumer,) = app.backend._consumers
        assert all(sub._cb is not None for sub in consumer.subscriptions)  # type: ignore[attr-defined]
        await app.stop()
        with pytest.raises(EmitError):  # a closed connection confirms nothing
            await _compat_send(connection, f"cfb.{uid}")
    finally:
        await app.stop()
        await delete_streams("nats://127.0.0.1:4222", f"fb_{uid}_dlq")
    assert sorted(got) == list(range(200))


async def _compat_send(connection: Any, subject: str) -> None:
    from dispytch.nats.core.producer import NATSCoreProducer

    await NATSCoreProducer(connection, timeout=2).send(subject, b"late")


# -- Redis --------------------------------------------------------------------------------------


async def test_redis_pubsub_reads_each_reply_through_parse_response(
    fallbacks: list[str], uid: str
) -> None:
    require_broker("redis", 6379)
    from dispytch.redis import _compat

    app = App("redis://127.0.0.1:6379/0", group=f"g_{uid}")
    try:
        got = await _round_trip(app, f"pfb:{uid}", count=300)
        consumer = app.listener.consumer  # type: ignore[union-attr]
        assert _compat.reply_reader(consumer.pubsub.connection) is None  # the fallback
    finally:
        await app.stop()
    assert sorted(got) == list(range(300))


async def test_redis_streams_on_every_fallback(fallbacks: list[str], uid: str) -> None:
    require_broker("redis_streams", 6379)
    from redis.asyncio import Redis

    app = App("redis+streams://127.0.0.1:6379/0", group=f"g_{uid}")
    try:
        got = await _round_trip(app, f"sfb:{uid}", count=100)
    finally:
        await app.stop()
        client = Redis.from_url("redis://127.0.0.1:6379/0")
        keys = [key async for key in client.scan_iter(match=f"*{uid}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    assert sorted(got) == list(range(100))


def test_a_tls_context_redis_py_cannot_use_is_refused(fallbacks: list[str]) -> None:
    pytest.importorskip("redis")
    import ssl

    from dispytch.errors import ConfigurationError
    from dispytch.redis import RedisBackend

    with pytest.raises(ConfigurationError, match="cannot use an ssl"):
        RedisBackend("rediss://127.0.0.1:6380/0", ssl_context=ssl.create_default_context())
