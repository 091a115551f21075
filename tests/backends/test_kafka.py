"""Kafka backend against a live Kafka (DISPYTCH_BROKERS=kafka)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from dispytch import (
    App,
    Dependency,
    Event,
    EventBase,
    EventEmitter,
    EventListener,
    HandlerGroup,
    TopicSegment,
)
from dispytch.emitter.producer import Outgoing
from dispytch.errors import EmitError, InvalidTopicError
from dispytch.routing import TopicPattern
from tests.helpers import eventually, require_broker, wait_until

aiokafka = pytest.importorskip("aiokafka")

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.partitioner import DefaultPartitioner  # noqa: E402

from dispytch.kafka import KafkaConsumer, KafkaEventConfig, KafkaProducer  # noqa: E402
from dispytch.kafka.consumer import KafkaFetchError  # noqa: E402
from tests.kafka_batches import Codec, send_batch  # noqa: E402

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


async def _dead_letters(app: App, topic: str, count: int, timeout: float = 20) -> list[Any]:
    """The dead letters of ``topic``, once there are ``count`` of them."""
    found: list[Any] = []

    async def enough() -> bool:
        found[:] = await app.backend.dead_letters(topic)
        return len(found) >= count

    await eventually(enough, f"{count} dead letter(s) of {topic}", timeout=timeout)
    return found


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


@pytest.mark.private_access
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


async def test_send_many_splits_what_one_record_batch_cannot_hold(topic: str, admin: Any) -> None:
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    client = AIOKafkaProducer(bootstrap_servers=SERVERS, max_batch_size=1024)
    producer = KafkaProducer(client)
    outgoing = [Outgoing(topic, b"%03d" % n + b"." * 100) for n in range(200)]
    outgoing.insert(100, Outgoing(topic, b"big" + b"." * 5000))  # alone in a batch of its own
    results = await producer.send_many(outgoing)
    await producer.close()
    await client.stop()
    assert results == [None] * 201
    values = [r.value for r in sorted(await _read_all(topic, 201), key=lambda r: r.offset)]
    assert values == [m.payload for m in outgoing]


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
    app, Boom = _failing_app(topic, KafkaEventConfig(partition_key="order-7"))
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
        # Nothing settled is committed yet (offset 0 carries only the delivery watermark).
        assert await committed() in (None, 0)
        await second.start()  # joins the group: the first member's partitions are revoked
        deadline = asyncio.get_running_loop().time() + 20
        while await committed() != 3:
            assert asyncio.get_running_loop().time() < deadline, "revoke did not commit"
            await asyncio.sleep(0.05)
    finally:
        await second.stop()
        await first.stop()
    assert sorted(handled) == [0, 1, 2]  # nothing handled twice by the new member


# -- aiokafka's fetch task failing -----------------------------------------------------------


@pytest.mark.private_access
async def test_a_failed_fetch_task_ends_listen_with_an_error(topic: str) -> None:
    client = AIOKafkaConsumer(
        topic,
        bootstrap_servers=SERVERS,
        group_id=f"g_{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await client.start()
    listener = EventListener(KafkaConsumer(client))

    @listener.handler(topic=topic, event="anything")
    async def handle(event: Event[dict[str, Any]]) -> None:
        pass

    def broken(assignment: Any) -> Any:
        raise AssertionError("simulated failure of aiokafka's fetch routine")

    try:
        await listener.subscribe()
        client._fetcher._get_actions_per_node = broken  # its next round fails
        with pytest.raises(KafkaFetchError, match="stopped fetching"):
            await asyncio.wait_for(listener.listen(), 30)
    finally:
        with contextlib.suppress(Exception):
            await client.stop()


# -- poison records: what aiokafka itself cannot parse ---------------------------------------


async def _produce(topic: str, values: list[bytes], partition: int | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=SERVERS)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


async def _commit(group: str, tp: TopicPartition, offset: int, metadata: str) -> None:
    """Commit as a previous member of ``group`` would have."""
    previous = AIOKafkaConsumer(
        tp.topic, bootstrap_servers=SERVERS, group_id=group, enable_auto_commit=False
    )
    await previous.start()
    try:
        await previous.commit({tp: (offset, metadata)})
    finally:
        await previous.stop()


async def _committed(group: str, tp: TopicPartition) -> tuple[int, str]:
    check = AIOKafkaConsumer(bootstrap_servers=SERVERS, group_id=group)
    await check.start()
    try:
        found = await check._coordinator.fetch_committed_offsets([tp])
    finally:
        await check.stop()
    return found[tp].offset, found[tp].metadata


def _failing_app(topic: str, config: KafkaEventConfig | None = None) -> tuple[App, Any]:
    """An app whose handler of ``topic`` always raises, and an event class for that topic."""
    app = App(URL, group=f"g_{topic[:40]}")

    @app.handler(topic=topic, event="boom")
    async def explode(event: Event[dict[str, Any]]) -> None:
        raise RuntimeError("kaboom")

    class Boom(EventBase):
        __topic__ = topic
        __event_type__ = "boom"
        __backend_config__ = config

    return app, Boom


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _envelope(n: int, event: str = "poison_test") -> bytes:
    return json.dumps({"id": f"id-{n}", "type": event, "body": {"n": n}, "timestamp": 1}).encode()


async def _send_batch(
    topic: str,
    records: list[tuple[bytes, list[tuple[bytes, bytes]]]],
    partition: int = 0,
    compression: Codec = None,
) -> None:
    """One record batch whose header names may be any bytes (see ``tests.kafka_batches``)."""
    await send_batch(SERVERS, topic, records, partition, compression)


@pytest.mark.parametrize("compression", [None, "gzip"])
@pytest.mark.private_access
async def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_the_rest_flows(
    topic: str, admin: Any, compression: Codec
) -> None:
    await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    # Partition 1 holds good records fetched together with the poison of partition 0: none may
    # be lost with aiokafka's exception.
    await _send_batch(topic, [(_envelope(100 + n), []) for n in range(3)], partition=1)
    await _send_batch(
        topic,
        [
            (_envelope(1), [(b"trace", b"t1")]),
            (_envelope(2), [(b"ok", b"v"), (b"\xff\xfebad-name\xff", b"\x00\x01raw")]),
            (_envelope(3), []),
        ],
        compression=compression,
    )
    handled: list[int] = []

    def build() -> App:
        app = App(URL, group=f"g_{topic}")

        @app.handler(topic=topic, event="poison_test")
        async def record(event: Event[dict[str, Any]]) -> None:
            handled.append(event.body["n"])

        return app

    app = build()
    await app.start()
    try:
        await wait_until(lambda: len(handled) >= 5, timeout=30, what="the good records")
        assert sorted(handled) == [1, 3, 100, 101, 102]
        # Dead-lettered by the listener, beside the good records (not before them).
        [letter] = await _dead_letters(app, topic, 1)
        consumer = app.listener.consumer  # type: ignore[union-attr]
        assert consumer.skipped == 0
    finally:
        await app.stop()
    assert json.loads(letter.payload)["body"]["n"] == 2
    assert letter.headers["x-dispytch-undecodable"] == "headers"
    assert letter.headers["x-dispytch-reason"] == "decode"
    assert letter.headers["ok"] == "v"
    pair = _b64(b"\xff\xfebad-name\xff") + ":" + _b64(b"\x00\x01raw")  # name and value
    assert letter.headers["x-dispytch-undecodable-header-1"] == pair

    # Restarted, the group goes on after the poison: new events are handled, nothing again.
    class PoisonTest(EventBase):
        __topic__ = topic
        __event_type__ = "poison_test"
        n: int

    handled.clear()
    app = build()
    await app.start()
    try:
        await app.emit(PoisonTest(n=4))
        await wait_until(lambda: handled == [4], timeout=30, what="the next event")
    finally:
        await app.stop()


# -- emits to topics Kafka refuses -------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "x" * 250, "has space", "tenant:1", "naïve", "a/b", "line\nbreak"]
)
async def test_an_emit_to_an_invalid_topic_name_raises_before_connecting(bad: str) -> None:
    client = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never reached
    producer = KafkaProducer(client)
    with pytest.raises(InvalidTopicError) as caught:
        await producer.send(bad, b"payload")
    assert "\n" not in str(caught.value)
    assert not producer._started() or client._sender.sender_task is None


async def test_an_unknown_topic_fails_fast_and_holds_up_no_other_emit(
    topic: str, admin: Any
) -> None:
    # The broker auto-creates topics, but not one whose name collides with an existing one
    # ('.' and '_' clash in Kafka's metric names): that topic never exists.
    await admin.create_topics([NewTopic(f"{topic}_x", num_partitions=1, replication_factor=1)])
    unknown = f"{topic}.x"
    client = AIOKafkaProducer(bootstrap_servers=SERVERS)
    producer = KafkaProducer(client, metadata_timeout=3.0)
    # A valid topic sharing the unknown topic's enqueue stripe.
    stripe = hash(unknown) % 64
    valid = next(t for n in range(10_000) if hash(t := f"{topic}_v{n}") % 64 == stripe)
    await admin.create_topics([NewTopic(valid, num_partitions=1, replication_factor=1)])
    await producer.start()
    try:
        await producer.send(valid, b"warm-up")  # metadata known: the next send needs none
        failing = asyncio.create_task(producer.send(unknown, b"lost"))
        await asyncio.sleep(0)  # it now waits for the unknown topic's metadata
        await producer.send(valid, b"goes through")
        assert not failing.done(), "the valid emit waited for the unknown topic"
        with pytest.raises(EmitError, match="does not exist") as caught:
            await failing
        assert not isinstance(caught.value, InvalidTopicError)
    finally:
        await producer.close()
        await client.stop()
    assert [r.value for r in await _read_all(valid, 2)] == [b"warm-up", b"goes through"]


# -- dead-letter destinations ------------------------------------------------------------------


async def test_dead_letters_keep_the_original_headers_byte_for_byte(topic: str) -> None:
    headers = {"x-trace": "t7", "binary": b"\xff\x00\xfe", "x-dispytch-reason": "forged"}
    app, Boom = _failing_app(topic, KafkaEventConfig(headers=headers))
    async with app:
        await app.emit(Boom())
        [record] = await _read_all(f"{topic}.dlq", 1)
    found = dict(record.headers)
    assert found["x-trace"] == b"t7"
    assert found["binary"] == b"\xff\x00\xfe"
    assert found["x-dispytch-reason"] == b"handler"  # ours, never the incoming one
    assert [k for k, _ in record.headers].count("x-dispytch-reason") == 1


async def test_a_topic_too_long_for_its_dlq_suffix_gets_a_valid_dead_letter_topic() -> None:
    topic = f"kt_{uuid.uuid4().hex}".ljust(249, "x")  # the longest name Kafka allows
    app, Boom = _failing_app(topic)
    async with app:
        await app.emit(Boom())
        dead: list[Any] = []

        async def stored() -> bool:
            dead[:] = await app.backend.dead_letters(topic)
            return bool(dead)

        await eventually(stored, "the dead letter", timeout=30)
    assert dead[0].topic == topic
    assert dead[0].reason == "handler"


@pytest.mark.private_access
@pytest.mark.timeout(90)
async def test_dead_letters_go_to_the_group_fallback_topic_when_the_dlq_cannot_be_written(
    topic: str, admin: Any
) -> None:
    # '{topic}.dlq' can never be created: '{topic}_dlq' exists and Kafka refuses names that
    # differ only in '.' versus '_'.
    await admin.create_topics([NewTopic(f"{topic}_dlq", num_partitions=1, replication_factor=1)])
    await _send_batch(
        topic,
        [(_envelope(1), [(b"\xffbad", b"v")]), (_envelope(2), [])],
    )
    group = f"g_{topic}"
    handled: list[int] = []
    app = App(URL, group=group, metadata_timeout=1)

    @app.handler(topic=topic, event="poison_test")
    async def record(event: Event[dict[str, Any]]) -> None:
        handled.append(event.body["n"])

    async with app:
        await wait_until(lambda: handled == [2], timeout=30, what="the good record")
        # After the listener's retries of '{topic}.dlq' (each waits metadata_timeout).
        [letter] = await _dead_letters(app, topic, 1, timeout=40)
    assert letter.topic == topic
    assert letter.headers["x-dispytch-undecodable"] == "headers"
    [raw] = await _read_all(f"dispytch.dlq.{group}", 1)
    assert dict(raw.headers)["x-dispytch-original-topic"] == topic.encode()


async def test_a_pattern_handler_never_receives_dead_letters(topic: str) -> None:
    # A dead letter of the literal topic, and an event the pattern must receive, both exist
    # before the app subscribes, so one subscription would match both.
    await _produce(f"{topic}.dlq", [_envelope(1)])
    await _produce(f"{topic}.other", [_envelope(2)])
    seen: list[tuple[str, int]] = []
    app = App(URL, group=f"g_{topic}")

    @app.handler(topic=f"{topic}.{{kind}}", event="poison_test")
    async def any_kind(event: Event[dict[str, Any]], kind: Annotated[str, TopicSegment()]) -> None:
        seen.append((kind, event.body["n"]))

    async with app:
        await wait_until(lambda: ("other", 2) in seen, timeout=30, what="the pattern's event")
    assert seen == [("other", 2)]


# -- delivery attempts across processes --------------------------------------------------------


@pytest.mark.private_access
async def test_records_a_dead_process_may_have_been_handling_are_recovered_one_by_one(
    topic: str,
) -> None:
    """The committed metadata says a previous owner died while recovering offsets 2..5 one at a
    time, with offset 3 delivered 3 times already: 3 is dead-lettered without running a
    handler (max_deliveries=3), the others of that range run one at a time, then all flows."""
    await _produce(topic, [_envelope(n) for n in range(8)], partition=0)
    group = f"g_{topic}"
    await _commit(group, TopicPartition(topic, 0), 2, "dispytch/1 w=6 r=6:2:s a=3:3")

    running: list[int] = []
    handled: list[int] = []
    overlap: list[tuple[int, list[int]]] = []
    app = App(URL, group=group, max_deliveries=3)

    @app.handler(topic=topic, event="poison_test")
    async def record(event: Event[dict[str, Any]]) -> None:
        n = event.body["n"]
        if running and n < 6:
            overlap.append((n, list(running)))
        running.append(n)
        await asyncio.sleep(0.02)
        running.remove(n)
        handled.append(n)

    async with app:
        await wait_until(lambda: len(handled) == 5, timeout=30, what="the other records")
        [letter] = await app.backend.dead_letters(topic)
        consumer = app.listener.consumer  # type: ignore[union-attr]
        await consumer.commit()
    assert sorted(handled) == [2, 4, 5, 6, 7]
    assert handled[:3] == [2, 4, 5]  # the recovered range, in order
    assert overlap == []  # one at a time
    assert json.loads(letter.payload)["body"]["n"] == 3
    assert (letter.reason, letter.attempts) == ("redelivery", 4)
    # Stopped cleanly: nothing is in flight for the next owner.
    assert await _committed(group, TopicPartition(topic, 0)) == (8, "")


async def test_a_clean_stop_with_work_handed_back_leaves_no_recovery_to_the_next_owner(
    topic: str,
) -> None:
    group = f"g_{topic}"
    entered = asyncio.Event()
    app = App(URL, group=group, shutdown_timeout=0.2)

    @app.handler(topic=topic, event="poison_test")
    async def slow(event: Event[dict[str, Any]]) -> None:
        entered.set()
        await asyncio.sleep(60)

    await _produce(topic, [_envelope(n) for n in range(3)], partition=0)
    async with app:
        await asyncio.wait_for(entered.wait(), 30)
    # Handed back, and no crash for the next owner to recover.
    assert await _committed(group, TopicPartition(topic, 0)) == (0, "")


@pytest.mark.private_access
async def test_after_a_first_crash_the_range_is_handed_out_as_usual_counted_once(
    topic: str,
) -> None:
    await _produce(topic, [_envelope(n) for n in range(8)], partition=0)
    group = f"g_{topic}"
    tp = TopicPartition(topic, 0)
    await _commit(group, tp, 2, "dispytch/1 w=6")  # died with 2..5 maybe in flight
    client = AIOKafkaConsumer(bootstrap_servers=SERVERS, group_id=group, enable_auto_commit=False)
    consumer = KafkaConsumer(client)
    await consumer.start([TopicPattern.parse(topic, ".")])
    try:
        stream = consumer.listen()
        # All of them handed out before any is settled: the range is not held back.
        messages = [await asyncio.wait_for(anext(stream), 20) for _ in range(6)]
        assert [(m.offset, m.delivery_attempt) for m in messages] == [
            (2, 2),
            (3, 2),
            (4, 2),
            (5, 2),
            (6, 1),
            (7, 1),
        ]
        offset, metadata = await _committed(group, tp)
        assert offset == 2 and " r=6:2" in metadata  # committed before any was handed out
        for message in messages:
            await consumer.ack(message)
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await consumer.close()
