"""Kafka backend against a live Kafka (DISPYTCH_BROKERS=kafka)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from dispytch import App, Dependency, Event, EventBase, EventEmitter, EventListener, HandlerGroup
from dispytch.emitter.producer import Outgoing
from dispytch.routing import TopicPattern
from tests.helpers import require_broker, wait_until

aiokafka = pytest.importorskip("aiokafka")

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.partitioner import DefaultPartitioner  # noqa: E402

from dispytch.kafka import KafkaConsumer, KafkaEventConfig, KafkaProducer  # noqa: E402

pytestmark = pytest.mark.timeout(60)

SERVERS = "127.0.0.1:9092"
URL = f"kafka://{SERVERS}"


@pytest.fixture(autouse=True)
def _live() -> None:
    require_broker("kafka", 9092)


@pytest.fixture
def topic() -> str:
    return f"kt_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def admin() -> AsyncIterator[Any]:
    client = AIOKafkaAdminClient(bootstrap_servers=SERVERS)
    await client.start()
    yield client
    await client.close()


async def _read_all(topic: str, count: int) -> list[Any]:
    """Read ``count`` records of ``topic`` from the beginning, without a group."""
    reader = AIOKafkaConsumer(topic, bootstrap_servers=SERVERS, auto_offset_reset="earliest")
    await reader.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(20):
            while len(records) < count:
                for batch in (await reader.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await reader.stop()
    return records


# -- the seed README, wired seed style -----------------------------------------------------


class User(BaseModel):
    id: str
    email: str
    name: str


class UserCreatedEvent(BaseModel):
    user: User
    timestamp: int


class UserService:
    def __init__(self) -> None:
        self.seen: list[User] = []

    async def do_smth_with_the_user(self, user: User) -> None:
        self.seen.append(user)


_service = UserService()


def get_user_service() -> UserService:
    return _service


@pytest.mark.parametrize("started", [True, False], ids=["started", "not-started"])
async def test_seed_readme_example_with_user_built_clients(topic: str, started: bool) -> None:
    service = _service
    service.seen.clear()
    user_events = HandlerGroup()

    @user_events.handler(topic=topic, event="user_registered")
    async def handle_user_registered(
        event: Event[UserCreatedEvent],
        user_service: Annotated[UserService, Dependency(get_user_service)],
    ) -> None:
        await user_service.do_smth_with_the_user(event.body.user)

    class UserRegistered(EventBase):
        __topic__ = topic
        __event_type__ = "user_registered"

        user: User
        timestamp: int

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=SERVERS,
        group_id=f"seed_{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=SERVERS)
    if started:
        await consumer.start()
        await producer.start()
    listener = EventListener(KafkaConsumer(consumer))
    listener.add_handler_group(user_events)
    emitter = EventEmitter(KafkaProducer(producer))
    await listener.subscribe()
    task = asyncio.create_task(listener.listen())
    try:
        user = User(id="u1", email="u1@example.com", name="John Doe")
        await emitter.emit(UserRegistered(user=user, timestamp=1700000000))
        await wait_until(lambda: service.seen == [user], timeout=20, what="the seed event")
    finally:
        listener.stop()
        await task
        await emitter.producer.close()
        if started:
            await consumer.stop()
            await producer.stop()
    # The settled record was committed when the listener closed its consumer.
    check = AIOKafkaAdminClient(bootstrap_servers=SERVERS)
    await check.start()
    try:
        committed = await check.list_consumer_group_offsets(f"seed_{topic}")
    finally:
        await check.close()
    assert committed[TopicPartition(topic, 0)].offset == 1


# -- KafkaEventConfig ----------------------------------------------------------------------


async def test_partition_key_routes_by_key(topic: str, admin: Any) -> None:
    await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])

    class Keyed(EventBase):
        __topic__ = topic
        __event_type__ = "keyed"
        n: int

    app = App(URL, group=f"g_{topic}")
    await app.start()
    try:
        for n in range(6):
            config = KafkaEventConfig(
                partition_key="alpha" if n % 2 == 0 else "beta",
                headers={"x-extra": "yes", "x-raw": b"\x01"},
            )
            await app.emit(Keyed(n=n, __backend_config__=config))
        config = KafkaEventConfig(partition_key=42, partition=2)
        await app.emit(Keyed(n=99, __backend_config__=config))
    finally:
        await app.stop()
    records = await _read_all(topic, 7)
    partitioner = DefaultPartitioner()
    by_key: dict[bytes, set[int]] = {}
    for record in records:
        by_key.setdefault(record.key, set()).add(record.partition)
    for key in (b"alpha", b"beta"):
        assert by_key[key] == {partitioner(key, [0, 1, 2], [0, 1, 2])}
    assert by_key[b"42"] == {2}
    alpha = next(r for r in records if r.key == b"alpha")
    assert ("x-extra", b"yes") in alpha.headers
    assert ("x-raw", b"\x01") in alpha.headers


async def test_send_many_frames_batches_per_partition_like_single_sends(
    topic: str, admin: Any
) -> None:
    await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    client = AIOKafkaProducer(bootstrap_servers=SERVERS, enable_idempotence=True, acks="all")
    producer = KafkaProducer(client)
    outgoing = [
        Outgoing(topic, f"k{n}".encode(), key=f"key{n % 5}".encode(), headers={"n": str(n)})
        for n in range(300)
    ]
    outgoing += [Outgoing(topic, f"u{n}".encode()) for n in range(50)]  # unkeyed
    outgoing.append(Outgoing(topic, b"p2", KafkaEventConfig(partition=2, timestamp_ms=1234)))
    outgoing.append(Outgoing(topic, b"p9", KafkaEventConfig(partition=9)))  # no such partition
    outgoing.append(Outgoing(f"{topic}.other", b"elsewhere", key=b"key0"))
    results = await producer.send_many(outgoing)
    await producer.close()
    await client.stop()
    assert results[-2] is not None and "no partition 9" in str(results[-2])
    assert [r for i, r in enumerate(results) if i != len(results) - 2] == [None] * 352

    records = await _read_all(topic, 351)
    partitioner = DefaultPartitioner()
    by_key: dict[bytes | None, list[Any]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record)
    for k in range(5):
        key = f"key{k}".encode()
        assert {r.partition for r in by_key[key]} == {partitioner(key, [0, 1, 2], [0, 1, 2])}
        in_order = [int(r.value[1:]) for r in sorted(by_key[key], key=lambda r: r.offset)]
        assert in_order == list(range(k, 300, 5))
        assert ("n", str(in_order[0]).encode()) in by_key[key][0].headers
    unkeyed = [r for r in by_key[None] if r.value.startswith(b"u")]
    assert len(unkeyed) == 50 and len({r.partition for r in unkeyed}) == 1
    pinned = next(r for r in by_key[None] if r.value == b"p2")
    assert (pinned.partition, pinned.timestamp) == (2, 1234)
    assert [r.value for r in await _read_all(f"{topic}.other", 1)] == [b"elsewhere"]


# -- commits never pass an unsettled record --------------------------------------------------


async def test_commit_stops_below_a_record_still_being_handled(topic: str, admin: Any) -> None:
    group = f"g_{topic}"
    release = asyncio.Event()
    handled: list[str] = []
    app = App(URL, group=group, commit_interval=0.02)

    @app.handler(topic=topic, event="step")
    async def handle(event: Event[dict[str, Any]]) -> None:
        if event.body["name"] == "A":
            await release.wait()
        handled.append(event.body["name"])

    class Step(EventBase):
        __topic__ = topic
        __event_type__ = "step"
        name: str

    def step(name: str, key: str) -> Step:
        return Step(name=name, __backend_config__=KafkaEventConfig(partition_key=key))

    async def committed() -> int | None:
        offsets = await admin.list_consumer_group_offsets(group)
        meta = offsets.get(TopicPartition(topic, 0))
        return None if meta is None or meta.offset < 0 else meta.offset

    await app.start()
    try:
        # offsets: B0=0, A=1, B1..B5=2..6, all on the topic's single partition
        await app.emit(step("B0", "B"))
        await app.emit(step("A", "A"))
        for n in range(1, 6):
            await app.emit(step(f"B{n}", "B"))
        await wait_until(lambda: len(handled) == 6, timeout=20, what="B events past blocked A")
        assert "A" not in handled
        assert app.listener is not None
        consumer = app.listener.consumer
        assert isinstance(consumer, KafkaConsumer)
        await consumer.commit()  # flush now: everything settled so far
        assert await committed() == 1  # B0 done; A (offset 1) still running blocks the rest

        release.set()
        await wait_until(lambda: len(handled) == 7, what="A after release")
        deadline = asyncio.get_running_loop().time() + 10
        while await committed() != 7:
            assert asyncio.get_running_loop().time() < deadline, "commit did not reach 7"
            await asyncio.sleep(0.02)
    finally:
        release.set()
        await app.stop()


# -- dead letters --------------------------------------------------------------------------


async def test_dead_letter_record_carries_headers_and_key(topic: str) -> None:
    app = App(URL, group=f"g_{topic}")

    @app.handler(topic=topic, event="boom")
    async def explode(event: Event[dict[str, Any]]) -> None:
        raise RuntimeError("kaboom")

    class Boom(EventBase):
        __topic__ = topic
        __event_type__ = "boom"
        __backend_config__ = KafkaEventConfig(partition_key="order-7")

    await app.start()
    try:
        sent = Boom()
        await app.emit(sent)
        [record] = await _read_all(f"{topic}.dlq", 1)
        dead = await app.backend.dead_letters(topic)
    finally:
        await app.stop()
    headers = {k: v.decode() for k, v in record.headers}
    assert headers["x-dispytch-reason"] == "handler"
    assert headers["x-dispytch-error-type"] == "RuntimeError"
    assert headers["x-dispytch-error-message"] == "kaboom"
    assert headers["x-dispytch-original-topic"] == topic
    assert headers["x-dispytch-original-partition"] == "0"
    assert headers["x-dispytch-original-offset"] == "0"
    assert headers["x-dispytch-handler"].endswith("explode")
    assert record.key == b"order-7"
    assert sent.id.encode() in record.value
    assert len(dead) == 1
    assert dead[0].topic == topic
    assert dead[0].key == b"order-7"
    assert dead[0].error == "RuntimeError: kaboom"


async def test_dead_letters_of_a_topic_without_any_is_empty(topic: str) -> None:
    app = App(URL, group=f"g_{topic}")
    await app.start()
    try:
        assert await app.backend.dead_letters(topic) == []
    finally:
        await app.stop()


# -- nack ------------------------------------------------------------------------------------


async def test_nack_hands_the_record_back(topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=SERVERS)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"first", key=b"k")
        await producer.send_and_wait(topic, b"second", key=b"k")
    finally:
        await producer.stop()
    client = AIOKafkaConsumer(
        bootstrap_servers=SERVERS,
        group_id=f"g_{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    consumer = KafkaConsumer(client)
    await consumer.start([TopicPattern.parse(topic, ".")])
    try:
        stream = consumer.listen()
        first = await anext(stream)
        second = await anext(stream)
        assert (first.payload, first.offset, first.key) == (b"first", 0, b"k")
        await consumer.ack(second)  # settled, but behind an unsettled record
        await consumer.nack(first)
        again = await anext(stream)
        assert (again.payload, again.offset, again.delivery_attempt) == (b"first", 0, 2)
        await consumer.ack(again)
        await stream.aclose()
    finally:
        await consumer.close()
    assert client._closed  # started by KafkaConsumer, so stopped by it


# -- revoke ----------------------------------------------------------------------------------


async def test_revoked_partitions_commit_what_was_settled(topic: str, admin: Any) -> None:
    group = f"g_{topic}"
    handled: list[int] = []

    class Tick(EventBase):
        __topic__ = topic
        __event_type__ = "tick"
        n: int

    def build() -> App:
        # Commits would otherwise wait an hour: only the revoke (or stop) can commit.
        app = App(URL, group=group, commit_interval=3600, commit_every=10_000)

        @app.handler(topic=topic, event="tick")
        async def tick(event: Event[dict[str, Any]]) -> None:
            handled.append(event.body["n"])

        return app

    async def committed() -> int | None:
        offsets = await admin.list_consumer_group_offsets(group)
        meta = offsets.get(TopicPartition(topic, 0))
        return None if meta is None or meta.offset < 0 else meta.offset

    first = build()
    second = build()
    await first.start()
    try:
        await first.emit_many(Tick(n=n) for n in range(3))
        await wait_until(lambda: len(handled) == 3, what="three ticks")
        assert await committed() is None
        await second.start()  # joins the group: the first member's partitions are revoked
        deadline = asyncio.get_running_loop().time() + 20
        while await committed() != 3:
            assert asyncio.get_running_loop().time() < deadline, "revoke did not commit"
            await asyncio.sleep(0.05)
    finally:
        await second.stop()
        await first.stop()
    assert sorted(handled) == [0, 1, 2]  # nothing handled twice by the new member
