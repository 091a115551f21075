"""Redis Streams backend against a live Redis (DISPYTCH_BROKERS=redis_streams), plus its pure
parts. Every test works on streams named after a fresh uid and deletes them afterwards."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from dispytch import App, Event, EventBase, EventEmitter, EventListener, TopicSegment
from dispytch.emitter.producer import Outgoing
from dispytch.errors import ConfigurationError, EmitError
from dispytch.listener.consumer import Message
from dispytch.routing import TopicPattern
from tests.helpers import eventually, require_broker, wait_until

redis_asyncio = pytest.importorskip("redis.asyncio")

from dispytch.redis.fields import decode_fields, encode_fields  # noqa: E402
from dispytch.redis.streams import (  # noqa: E402
    RedisStreamsBackend,
    RedisStreamsConsumer,
    RedisStreamsProducer,
)
from dispytch.redis.streams.backend import client_url  # noqa: E402
from dispytch.redis.topics import PatternMatcher, subscription_glob  # noqa: E402

pytestmark = pytest.mark.timeout(60)

URL = "redis+streams://127.0.0.1:6379/0"
PLAIN_URL = "redis://127.0.0.1:6379/0"


def _live() -> None:
    require_broker("redis_streams", 6379)


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def redis(uid: str) -> AsyncIterator[Any]:
    """A client for checks; on teardown it deletes every key holding the test's uid."""
    _live()
    client = redis_asyncio.Redis.from_url(PLAIN_URL)
    yield client
    keys = [key async for key in client.scan_iter(match=f"*{uid}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def _pending(redis: Any, stream: str, group: str) -> int:
    return int((await redis.xpending(stream, group))["pending"])


async def _take(consumer: RedisStreamsConsumer, count: int, timeout: float = 10.0) -> list[Message]:
    got: list[Message] = []
    stream = consumer.listen()
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(await anext(stream))
    return got


class Order(BaseModel):
    order_id: int


def _order_event(topic: str) -> type[EventBase]:
    class OrderPlaced(EventBase):
        __topic__ = topic
        __event_type__ = "order_placed"
        order_id: int

    return OrderPlaced


# -- pure ---------------------------------------------------------------------------------------


def test_entry_fields_round_trip_and_payload_only_entries() -> None:
    fields = encode_fields(b"\xff\x00body", b"customer-1", {"trace": "abc", "x-n": "1"})
    assert list(fields) == [b"payload", b"key", b"h:trace", b"h:x-n"]
    assert decode_fields(fields) == (b"\xff\x00body", b"customer-1", {"trace": "abc", "x-n": "1"})
    assert decode_fields({b"payload": b"only"}) == (b"only", None, {})
    assert decode_fields({b"payload": b"p", b"other": b"ignored"}) == (b"p", None, {})
    # What Dispytch cannot read: the consumer dead-letters such entries (see records.py).
    assert decode_fields({b"no-payload": b"x"}) is None
    assert decode_fields(None) is None
    assert decode_fields({b"payload": b"p", b"h:\xff": b"v"}) is None
    assert decode_fields({b"payload": b"p", b"h:n": b"\xff"}) is None


def test_pattern_globs_and_discovery_filter() -> None:
    pattern = TopicPattern.parse("we?rd[1]:{user_id}:events", ":")
    assert subscription_glob(pattern) == "we\\?rd\\[1\\]:*:events"
    matcher = PatternMatcher(TopicPattern.parse("user:{user_id}", ":"))
    assert matcher("user:42")
    assert not matcher("user:42:extra")  # '*' spans ':' in Redis; the regex does not
    assert not matcher("user:42.dlq")  # never consume dead letters by accident
    assert PatternMatcher(TopicPattern.parse("user:{user_id}:ev.dlq", ":"))("user:42:ev.dlq")


def test_url_scheme_and_repr_hide_the_password() -> None:
    assert client_url("redis+streams://h:1/0") == "redis://h:1/0"
    assert client_url("rediss+streams://:pw@h:1/0") == "rediss://:pw@h:1/0"
    backend = RedisStreamsBackend("redis+streams://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in repr(backend)


async def test_a_client_that_decodes_responses_is_refused() -> None:
    client = redis_asyncio.Redis.from_url(PLAIN_URL, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        RedisStreamsConsumer(client, streams=["s"], group="g")
    await client.aclose()


# -- seed style ---------------------------------------------------------------------------------


async def test_seed_style_round_trip_with_key_and_headers(redis: Any, uid: str) -> None:
    stream = f"orders_{uid}"
    got: list[tuple[int, str]] = []
    consumer = RedisStreamsConsumer(redis, streams=[stream], group=f"g_{uid}", consumer="c1")
    listener = EventListener(consumer)

    @listener.handler(topic=stream, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        got.append((event.body.order_id, event.topic))

    await listener.subscribe()
    task = asyncio.create_task(listener.listen())
    emitter = EventEmitter(RedisStreamsProducer(redis))
    await emitter.emit(_order_event(stream)(order_id=7))
    await wait_until(lambda: got == [(7, stream)], what="the seed-style event")
    listener.stop()
    await asyncio.wait_for(task, 10)
    assert await _pending(redis, stream, f"g_{uid}") == 0

    # The producer writes key and headers; a consumer reads them back.
    await RedisStreamsProducer(redis).send(stream, b"raw", key=b"k1", headers={"trace": "t1"})
    await redis.xadd(stream, {"payload": b"payload only"})  # written by another tool
    reader = RedisStreamsConsumer(redis, streams=[stream], group=f"other_{uid}")
    await reader.start()
    messages = await _take(reader, 3)
    assert [(m.payload, m.key, dict(m.headers)) for m in messages[1:]] == [
        (b"raw", b"k1", {"trace": "t1"}),
        (b"payload only", None, {}),
    ]
    assert messages[0].delivery_attempt == 1 and messages[0].offset is None
    assert isinstance(messages[0].extra, str) and "-" in messages[0].extra
    await reader.close()


async def test_send_many_reports_each_entry_and_keeps_call_order(redis: Any, uid: str) -> None:
    stream, not_a_stream = f"orders_{uid}", f"plain_{uid}"
    await redis.set(not_a_stream, b"a string key")
    producer = RedisStreamsProducer(redis, max_batch=7)  # several round trips
    outgoing = [
        Outgoing(stream, str(i).encode(), key=b"k", headers={"n": str(i)}) for i in range(20)
    ]
    outgoing.insert(3, Outgoing(not_a_stream, b"refused"))
    results = await producer.send_many(outgoing)
    assert isinstance(results[3], EmitError) and "is the key a stream" in str(results[3])
    assert results[:3] + results[4:] == [None] * 20
    entries = await redis.xrange(stream)
    assert [decode_fields(fields)[0] for _, fields in entries] == [
        str(i).encode() for i in range(20)
    ]
    await producer.close()
    closed = await producer.send_many([Outgoing(stream, b"late")])
    assert isinstance(closed[0], EmitError) and "closed" in str(closed[0])


@pytest.mark.parametrize("held", [True, False], ids=["held-connection", "client-pipeline"])
async def test_an_emit_without_the_replicas_asked_for_is_not_confirmed(
    redis: Any, uid: str, held: bool
) -> None:
    """WAIT follows a lone send as it follows a batch (the local Redis has no replica)."""
    stream, not_a_stream = f"waited_{uid}", f"plain_{uid}"
    await redis.set(not_a_stream, b"a string key")
    producer = RedisStreamsProducer(redis, wait_replicas=1, wait_timeout=0.05)
    if not held:
        producer._pool = None
    with pytest.raises(EmitError, match="0 of the 1 replica"):
        await producer.send(stream, b"lone")
    results = await producer.send_many(
        [Outgoing(stream, b"a"), Outgoing(not_a_stream, b"refused"), Outgoing(stream, b"b")]
    )
    assert isinstance(results[1], EmitError) and "is the key a stream" in str(results[1])
    for result in (results[0], results[2]):
        assert isinstance(result, EmitError) and "Redis stored 2 entries but 0" in str(result)
    assert len(await redis.xrange(stream)) == 3  # stored, not confirmed
    await producer.close()


async def test_batched_acks_really_acknowledge(redis: Any, uid: str) -> None:
    topic = f"bulk_{uid}"
    group = f"g_{uid}"
    handled: list[int] = []
    before = await _xack_calls(redis)
    app = App(URL, group=group, concurrency=64)

    @app.handler(topic=topic, event="order_placed")
    async def handle(event: Event[Order]) -> None:
        handled.append(event.body.order_id)

    await app.start()
    try:
        await app.emit_many(_order_event(topic)(order_id=i) for i in range(1000))
        await wait_until(lambda: len(handled) == 1000, timeout=30, what="1000 events")
        await eventually(
            lambda: _zero(_pending(redis, topic, group)), what="XPENDING back to 0", timeout=5
        )
    finally:
        await app.stop()
    assert sorted(handled) == list(range(1000))
    # One round trip per event would be 1000 XACK calls; batching sends far fewer.
    assert await _xack_calls(redis) - before < 200


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def _xack_calls(redis: Any) -> int:
    return await _calls(redis, "xack")


# -- redelivery ---------------------------------------------------------------------------------

_CRASHING_CONSUMER = """
import asyncio, sys
from redis.asyncio import Redis
from dispytch.redis.streams import RedisStreamsConsumer

async def main():
    client = Redis.from_url("redis://127.0.0.1:6379/0")
    consumer = RedisStreamsConsumer(client, streams=[sys.argv[1]], group=sys.argv[2])
    await consumer.start()
    stream = consumer.listen()
    for _ in range(int(sys.argv[3])):
        await anext(stream)
    print("holding", flush=True)
    await asyncio.Event().wait()  # handling forever, never acking: until SIGKILL

asyncio.run(main())
"""


async def test_entries_of_a_killed_consumer_are_claimed_by_another(redis: Any, uid: str) -> None:
    stream, group = f"crash_{uid}", f"g_{uid}"
    for i in range(5):
        await redis.xadd(stream, {"payload": f"e{i}".encode()})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_CONSUMER, stream, group, "5",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"holding"
        assert await _pending(redis, stream, group) == 5
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    survivor = RedisStreamsConsumer(redis, streams=[stream], group=group, claim_idle_ms=300)
    await survivor.start()
    try:
        started = time.monotonic()
        messages = await _take(survivor, 5)
        assert time.monotonic() - started < 5
        assert [m.payload for m in messages] == [f"e{i}".encode() for i in range(5)]
        assert [m.delivery_attempt for m in messages] == [2] * 5
        for message in messages:
            await survivor.ack(message)
        await eventually(lambda: _zero(_pending(redis, stream, group)), what="acks")
    finally:
        await survivor.close()


async def test_a_restarted_consumer_with_the_same_name_resumes_its_own_entries(
    redis: Any, uid: str
) -> None:
    stream, group = f"resume_{uid}", f"g_{uid}"
    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    await redis.xadd(stream, {"payload": b"a"})
    await redis.xadd(stream, {"payload": b"b"})
    # "fixed" read both and died before acking.
    await redis.xreadgroup(group, "fixed", {stream: ">"}, count=10)
    await redis.xadd(stream, {"payload": b"c"})
    consumer = RedisStreamsConsumer(redis, streams=[stream], group=group, consumer="fixed")
    await consumer.start()  # claim_idle_ms is 30 s: only its own history brings them back now
    try:
        messages = await _take(consumer, 3, timeout=5)
        assert [(m.payload, m.delivery_attempt) for m in messages] == [
            (b"a", 2),
            (b"b", 2),
            (b"c", 1),
        ]
    finally:
        await consumer.close()


async def test_nack_redelivers_promptly_and_close_hands_back(redis: Any, uid: str) -> None:
    stream, group = f"nack_{uid}", f"g_{uid}"
    await redis.xadd(stream, {"payload": b"again"})
    consumer = RedisStreamsConsumer(redis, streams=[stream], group=group, claim_idle_ms=500)
    await consumer.start()
    try:
        (first,) = await _take(consumer, 1)
        await consumer.nack(first)
        (second,) = await _take(consumer, 1, timeout=5)
        assert (second.payload, second.delivery_attempt) == (b"again", 2)
    finally:
        await consumer.close()  # hands back the unsettled entry at once
    other = RedisStreamsConsumer(redis, streams=[stream], group=group, claim_idle_ms=500)
    await other.start()
    try:
        (third,) = await _take(other, 1, timeout=5)
        assert (third.payload, third.delivery_attempt) == (b"again", 3)
    finally:
        await other.close()


async def test_a_live_consumer_keeps_an_entry_it_handles_longer_than_claim_idle(
    redis: Any, uid: str
) -> None:
    stream, group = f"slow_{uid}", f"g_{uid}"
    await redis.xadd(stream, {"payload": b"slow"})
    slow = RedisStreamsConsumer(redis, streams=[stream], group=group, claim_idle_ms=300)
    await slow.start()
    (held,) = await _take(slow, 1)
    thief = RedisStreamsConsumer(redis, streams=[stream], group=group, claim_idle_ms=300)
    await thief.start()
    stolen = asyncio.create_task(_take(thief, 1, timeout=1.5))
    # Four times claim_idle_ms: the slow consumer's refreshes keep the entry its own.
    with pytest.raises(TimeoutError):
        await stolen
    await slow.ack(held)
    await eventually(lambda: _zero(_pending(redis, stream, group)), what="the ack")
    await thief.close()
    await slow.close()


# -- app style ----------------------------------------------------------------------------------


async def test_pattern_topic_streams_are_discovered(redis: Any, uid: str) -> None:
    got: list[tuple[str, str]] = []
    app = App(URL, group=f"g_{uid}", discovery_interval=0.2)

    @app.handler(topic=f"orders:{{region}}:placed_{uid}", event="placed")
    async def handle(event: Event[dict], region: Annotated[str, TopicSegment()]) -> None:
        got.append((region, event.topic))

    class Placed(EventBase):
        __topic__ = f"orders:{{region}}:placed_{uid}"
        __event_type__ = "placed"
        region: str

    await redis.xadd(f"orders:eu:placed_{uid}", {"payload": b"before start: not an envelope"})
    await redis.xadd(f"orders:eu:x:placed_{uid}", {"payload": b"two segments: not ours"})
    await app.start()
    try:
        await app.emit(Placed(region="eu"))  # the stream existed at start
        await app.emit(Placed(region="us"))  # a new stream: found by the next SCAN
        await wait_until(lambda: len(got) == 2, what="events on both streams")
        assert sorted(got) == [
            ("eu", f"orders:eu:placed_{uid}"),
            ("us", f"orders:us:placed_{uid}"),
        ]
        assert app.listener is not None
        consumer = app.listener.consumer
        assert isinstance(consumer, RedisStreamsConsumer)
        assert sorted(consumer.streams) == [f"orders:eu:placed_{uid}", f"orders:us:placed_{uid}"]
        # The undecodable entry written before start was read too (group created at "0").
        dead = await app.backend.dead_letters(f"orders:eu:placed_{uid}")
        assert [d.reason for d in dead] == ["decode"]
    finally:
        await app.stop()


async def test_dead_letters_go_to_the_dlq_stream_with_headers(redis: Any, uid: str) -> None:
    topic = f"fail_{uid}"

    class Keyed(BaseModel):
        partition_key: str

    class OrderPlaced(EventBase):
        __topic__ = topic
        __event_type__ = "order_placed"
        __backend_config__ = Keyed(partition_key="customer-9")
        order_id: int

    app = App(URL, group=f"g_{uid}")

    @app.handler(topic=topic, event="order_placed", retries=1, retry_interval=0.01)
    async def broken(event: Event[Order]) -> None:
        raise ValueError(f"no stock for {event.body.order_id}")

    await app.start()
    try:
        sent = OrderPlaced(order_id=3)
        await app.emit(sent)
        dead: list[Any] = []

        async def dead_lettered() -> bool:
            dead[:] = await app.backend.dead_letters(topic)
            return len(dead) == 1

        await eventually(dead_lettered, what="the dead letter")
        await eventually(lambda: _zero(_pending(redis, topic, f"g_{uid}")), what="the ack")
    finally:
        await app.stop()
    letter = dead[0]
    assert (letter.reason, letter.attempts, letter.key) == ("handler", 2, b"customer-9")
    assert letter.error == "ValueError: no stock for 3"
    assert letter.headers["x-dispytch-original-topic"] == topic
    assert "-" in letter.headers["x-dispytch-original-id"]
    assert sent.id.encode() in letter.payload
    ((_, fields),) = await redis.xrange(f"{topic}.dlq")
    assert fields[b"h:x-dispytch-reason"] == b"handler" and fields[b"key"] == b"customer-9"


async def test_consumer_reads_again_after_its_connection_is_killed(redis: Any, uid: str) -> None:
    stream, group = f"kill_{uid}", f"g_{uid}"
    consumer = RedisStreamsConsumer(
        redis_asyncio.Redis.from_url(PLAIN_URL),
        streams=[stream],
        group=group,
        poll_interval=0.2,
        owns_client=True,
    )
    await consumer.start()
    try:
        await redis.xadd(stream, {"payload": b"one"})
        await _take(consumer, 1)
        assert consumer._reader_id is not None
        await redis.execute_command("CLIENT", "KILL", "ID", consumer._reader_id)
        await redis.xadd(stream, {"payload": b"two"})
        (after,) = await _take(consumer, 1)
        assert after.payload == b"two"
    finally:
        await consumer.close()


class _CuttableProxy:
    """A TCP proxy to Redis whose connections the test can cut, refusing new ones for a while."""

    def __init__(self) -> None:
        self.refuse_until = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> _CuttableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut(0.0)
        await self._server.wait_closed()

    def cut(self, refuse_for: float) -> None:
        self.refuse_until = time.monotonic() + refuse_for
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.refuse_until:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self._writers.update({writer, up_writer})

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def test_consumer_survives_a_broker_outage(
    redis: Any, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream, group = f"outage_{uid}", f"g_{uid}"
    async with _CuttableProxy() as proxy:
        consumer = RedisStreamsConsumer(
            redis_asyncio.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=2),
            streams=[stream],
            group=group,
            poll_interval=0.2,
            reconnect_max_delay=0.5,
            owns_client=True,
        )
        await consumer.start()
        try:
            await redis.xadd(stream, {"payload": b"before"})
            (before,) = await _take(consumer, 1)
            await consumer.ack(before)
            proxy.cut(refuse_for=1.5)  # every connection drops; new ones fail for 1.5 s
            await redis.xadd(stream, {"payload": b"during"})
            (during,) = await _take(consumer, 1, timeout=15)
            assert during.payload == b"during"
            await consumer.ack(during)
            await eventually(lambda: _zero(_pending(redis, stream, group)), what="both acks")
        finally:
            await consumer.close()
    assert consumer.reconnects >= 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # One warning per outage from the reader (and at most one from the acks), not one per attempt.
    assert len([w for w in warnings if "connection lost" in w]) == 1
    assert len([w for w in warnings if "could not acknowledge" in w]) <= 1


async def test_an_idle_consumer_does_not_spin(redis: Any, uid: str) -> None:
    stream = f"idle_{uid}"
    consumer = RedisStreamsConsumer(
        redis, streams=[stream], group=f"g_{uid}", poll_interval=1.0, discovery_interval=0.1
    )
    await consumer.start()
    try:
        before = await _calls(redis, "xreadgroup")
        await asyncio.sleep(1.0)  # an observation window, not a wait for a condition
        reads = await _calls(redis, "xreadgroup") - before
    finally:
        await consumer.close()
    # About one blocking read per poll_interval. (Redis ends short BLOCKs only every 100 ms,
    # hz 10, so a consumer that spins shows as ~10 reads per second, not thousands.)
    assert reads <= 4


async def test_a_deleted_stream_gets_its_group_back(redis: Any, uid: str) -> None:
    stream, group = f"deleted_{uid}", f"g_{uid}"
    consumer = RedisStreamsConsumer(redis, streams=[stream], group=group, poll_interval=0.2)
    await consumer.start()
    try:
        await redis.delete(stream)  # the group goes with it: the next read gets NOGROUP
        await eventually(
            lambda: _has_group(redis, stream, group), what="the group to be created again"
        )
        await redis.xadd(stream, {"payload": b"after"})
        (after,) = await _take(consumer, 1)
        assert after.payload == b"after"
    finally:
        await consumer.close()


async def _has_group(redis: Any, stream: str, group: str) -> bool:
    if not await redis.exists(stream):
        return False
    return any(g["name"] == group.encode() for g in await redis.xinfo_groups(stream))


async def _calls(redis: Any, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
