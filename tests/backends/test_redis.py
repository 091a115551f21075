"""Redis Pub/Sub backend against a live Redis (DISPYTCH_BROKERS=redis), plus its pure parts."""

from __future__ import annotations

import asyncio
import logging
import socket
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
from dispytch.emitter.producer import Outgoing, ProducerTimeout
from dispytch.errors import EmitError
from dispytch.routing import TopicPattern
from tests.backends.proxy import FaultyProxy
from tests.helpers import eventually, require_broker, wait_until

redis_asyncio = pytest.importorskip("redis.asyncio")

from dispytch.redis import (  # noqa: E402
    RedisBackend,
    RedisConsumer,
    RedisProducer,
    RedisUnavailableError,
)
from dispytch.redis.dead_letters import read_dead_letters  # noqa: E402
from dispytch.redis.topics import escape_glob, subscription_glob  # noqa: E402

pytestmark = pytest.mark.timeout(60)

URL = "redis://127.0.0.1:6379/0"


def _live() -> None:
    require_broker("redis", 6379)


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def redis() -> AsyncIterator[Any]:
    _live()
    client = redis_asyncio.Redis.from_url(URL)
    yield client
    await client.aclose()


# -- pure ---------------------------------------------------------------------------------------


def test_glob_escapes_metacharacters_in_literal_parts() -> None:
    assert escape_glob("a*b?c[d]e\\f^") == "a\\*b\\?c\\[d\\]e\\\\f\\^"
    pattern = TopicPattern.parse("we?rd[1]:{user_id}:events*", ":")
    assert subscription_glob(pattern) == "we\\?rd\\[1\\]:*:events\\*"
    assert subscription_glob(TopicPattern.parse("plain:{a}:{b}", ":")) == "plain:*:*"


def test_backend_repr_and_errors_never_show_the_password() -> None:
    backend = RedisBackend("redis://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in repr(backend)
    assert backend.topic_delimiter == ":"


# -- seed style ---------------------------------------------------------------------------------


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


SERVICE = UserService()


def get_user_service() -> UserService:
    return SERVICE


async def _listening(listener: EventListener) -> asyncio.Task[None]:
    await listener.subscribe()  # returns once Redis confirmed the subscriptions
    return asyncio.create_task(listener.listen())


async def _subscribers(redis: Any, channel: str, at_least: int) -> bool:
    return bool((await redis.pubsub_numsub(channel))[0][1] >= at_least)


async def _stopped(listener: EventListener, task: asyncio.Task[None]) -> None:
    listener.stop()
    await asyncio.wait_for(task, 10)


async def test_seed_readme_example_wired_seed_style(redis: Any, uid: str) -> None:
    topic = f"user_events_{uid}"
    service = SERVICE
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

    pubsub = redis.pubsub()
    await pubsub.subscribe(topic)
    listener = EventListener(RedisConsumer(pubsub))
    listener.add_handler_group(user_events)
    emitter = EventEmitter(RedisProducer(redis))
    task = await _listening(listener)
    user = User(id=str(uuid.uuid4()), email="example@mail.com", name="John Doe")
    await emitter.emit(UserRegistered(user=user, timestamp=1_700_000_000))
    await wait_until(lambda: service.seen == [user], what="the README handler")
    await _stopped(listener, task)
    await pubsub.aclose()


async def test_pattern_subscription_seed_style(redis: Any, uid: str) -> None:
    got: list[tuple[str, str]] = []
    pubsub = redis.pubsub()
    await pubsub.psubscribe(f"orders_{uid}:*")
    listener = EventListener(RedisConsumer(pubsub))

    @listener.handler(topic=f"orders_{uid}:{{region}}", event="placed")
    async def handle(event: Event[dict], region: Annotated[str, TopicSegment()]) -> None:
        got.append((region, event.topic))

    class Placed(EventBase):
        __topic__ = f"orders_{uid}:{{region}}"
        __event_type__ = "placed"
        region: str

    task = await _listening(listener)
    emitter = EventEmitter(RedisProducer(redis))
    await emitter.emit(Placed(region="eu"))
    await emitter.emit(Placed(region="us"))
    await wait_until(lambda: len(got) == 2, what="two pmessages")
    assert got == [("eu", f"orders_{uid}:eu"), ("us", f"orders_{uid}:us")]
    await _stopped(listener, task)
    await pubsub.aclose()


async def test_unsubscribed_pubsub_is_subscribed_to_the_handlers_topics(
    redis: Any, uid: str
) -> None:
    got: list[str] = []
    pubsub = redis.pubsub()
    listener = EventListener(RedisConsumer(pubsub))

    @listener.handler(topic=f"lit*{uid}", event="e")
    async def literal(event: Event[dict]) -> None:
        got.append(event.topic)

    @listener.handler(topic=f"we?rd[1]_{uid}:{{n}}", event="e")
    async def pattern(event: Event[dict], n: Annotated[int, TopicSegment()]) -> None:
        got.append(event.topic)

    task = await _listening(listener)
    # A glob left unescaped would also match these two channels and deliver them.
    assert await redis.publish(f"weXrd1_{uid}:5", b"{}") == 0
    assert await redis.publish(f"litX{uid}", b"{}") == 0
    producer = RedisProducer(redis)
    emitter = EventEmitter(producer)
    for topic in (f"lit*{uid}", f"we?rd[1]_{uid}:7"):

        class E(EventBase):
            __topic__ = topic
            __event_type__ = "e"

        await emitter.emit(E())
    await wait_until(lambda: len(got) == 2, what="both events")
    assert sorted(got) == sorted([f"lit*{uid}", f"we?rd[1]_{uid}:7"])
    await _stopped(listener, task)
    await pubsub.aclose()


async def test_dead_letters_land_in_a_stream_with_headers(redis: Any, uid: str) -> None:
    topic = f"dl_{uid}"
    pubsub = redis.pubsub()
    await pubsub.subscribe(topic)
    listener = EventListener(RedisConsumer(pubsub, dead_letter_maxlen=1000))

    @listener.handler(topic=topic, event="e", retries=1, retry_interval=0.01)
    async def broken(event: Event[dict]) -> None:
        raise RuntimeError("boom")

    task = await _listening(listener)
    await RedisProducer(redis).send(topic, b"\x00 not json")
    await redis.publish(topic, b'{"id":"x1","type":"e","body":{},"timestamp":1}')

    async def two() -> bool:
        return bool(await redis.xlen(f"{topic}.dlq") == 2)

    await eventually(two, "two dead letters")
    # Both fail at once on parallel workers: their dead letters may land in either order.
    dead = sorted(await read_dead_letters(redis, topic), key=lambda d: d.reason)
    assert [d.reason for d in dead] == ["decode", "handler"]
    assert dead[0].payload == b"\x00 not json"
    assert dead[1].error == "RuntimeError: boom"
    assert dead[1].attempts == 2
    assert dead[1].handler is not None and dead[1].handler.endswith("broken")
    assert dead[1].headers["x-dispytch-original-topic"] == topic
    assert "x-dispytch-original-partition" not in dead[1].headers
    await _stopped(listener, task)
    await pubsub.aclose()
    await redis.delete(f"{topic}.dlq")


# -- app style: reconnects ------------------------------------------------------------------------


async def test_consumer_reconnects_after_client_kill_and_leaks_no_task(
    uid: str, redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"rc_{uid}"
    name = f"dispytch-test-{uid}"
    got: list[int] = []
    app = App(URL, client_name=name, shutdown_timeout=5.0)

    @app.handler(topic=topic, event="n")
    async def handle(event: Event[dict]) -> None:
        got.append(event.body["n"])

    class N(EventBase):
        __topic__ = topic
        __event_type__ = "n"
        n: int

    before = asyncio.all_tasks()
    await app.start()
    await app.emit(N(n=1))
    await wait_until(lambda: got == [1], what="the first event")

    # Kill only this test's subscriber (other suites may share the server).
    clients = await redis.client_list(_type="pubsub")
    ids = [c["id"] for c in clients if c.get("name") == name]
    assert len(ids) == 1
    await redis.execute_command("CLIENT", "KILL", "ID", ids[0])

    consumer = app.listener.consumer  # type: ignore[union-attr]
    await wait_until(lambda: consumer.reconnects >= 1, what="the reconnect")

    await eventually(lambda: _subscribers(redis, topic, 1), "the resubscription")
    await app.emit(N(n=2))
    await app.emit(N(n=3))
    await wait_until(lambda: got == [1, 2, 3], what="events emitted after the reconnect")
    await app.stop()

    assert asyncio.all_tasks() == before, "tasks left running after stop"
    lost = [r for r in caplog.records if "reconnecting in" in r.getMessage()]
    back = [r for r in caplog.records if "reconnected to Redis" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING
    assert len(back) == 1
    assert (await redis.pubsub_numsub(topic))[0][1] == 0  # the subscriber is gone


# -- producer -----------------------------------------------------------------------------------


async def test_publish_with_no_subscriber_is_confirmed_not_an_error(
    redis: Any, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dispytch.redis")
    producer = RedisProducer(redis)
    await producer.send(f"nobody_{uid}", b"x", headers={"a": "b"}, key=b"k")
    assert any("no subscriber" in r.getMessage() for r in caplog.records)
    await producer.close()
    with pytest.raises(EmitError, match="closed"):
        await producer.send(f"nobody_{uid}", b"x")


async def test_emit_many_is_published_in_call_order(redis: Any, uid: str) -> None:
    topic = f"order_{uid}"
    pubsub = redis.pubsub()
    await pubsub.subscribe(topic)
    await pubsub.get_message(timeout=5)  # the subscribe confirmation
    producer = RedisProducer(redis, max_batch=100)
    await asyncio.gather(*(producer.send(topic, str(i).encode()) for i in range(500)))
    got: list[int] = []
    while len(got) < 500:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert msg is not None, f"only {len(got)} of 500 arrived"
        got.append(int(msg["data"]))
    assert got == list(range(500))
    await pubsub.aclose()


async def _kill_clients(redis: Any, name: str) -> int:
    """Close this test's connections named ``name`` on the shared server; how many."""
    ids = [c["id"] for c in await redis.client_list() if c.get("name") == name]
    for client_id in ids:
        await redis.execute_command("CLIENT", "KILL", "ID", client_id)
    return len(ids)


async def test_a_send_after_the_connection_was_killed_reconnects(redis: Any, uid: str) -> None:
    name = f"dispytch-producer-{uid}"
    client = redis_asyncio.Redis.from_url(URL, client_name=name)
    producer = RedisProducer(client)
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"k_{uid}")
    await pubsub.get_message(timeout=5)
    try:
        await producer.send(f"k_{uid}", b"1")
        assert await _kill_clients(redis, name) == 1  # the producer's own connection
        # The dead connection is found on the next write and reopened, as the client retries
        # its own commands: the send is confirmed, not an error.
        await producer.send(f"k_{uid}", b"2")
        await producer.send_many([Outgoing(f"k_{uid}", b"3"), Outgoing(f"k_{uid}", b"4")])
        got = []
        while len(got) < 4:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert msg is not None, f"only {got} arrived"
            got.append(msg["data"])
        assert got == [b"1", b"2", b"3", b"4"]
    finally:
        await producer.close()
        await pubsub.aclose()
        await client.aclose()
    assert await _kill_clients(redis, name) == 0  # close gave the connection back, and


async def test_a_single_connection_client_publishes_through_its_own_commands(
    redis: Any, uid: str
) -> None:
    # No pool to borrow a connection from: the client's commands and pipelines are used.
    client = redis_asyncio.Redis.from_url(URL, single_connection_client=True)
    producer = RedisProducer(client, max_batch=3)
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"s_{uid}")
    await pubsub.get_message(timeout=5)
    try:
        await producer.send(f"s_{uid}", b"0")
        results = await producer.send_many([Outgoing(f"s_{uid}", b"%d" % i) for i in range(1, 8)])
        assert results == [None] * 7
        got = []
        while len(got) < 8:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert msg is not None, f"only {got} arrived"
            got.append(int(msg["data"]))
        assert got == list(range(8))
    finally:
        await producer.close()
        await pubsub.aclose()
        await client.aclose()


async def test_close_waits_for_the_send_being_written_and_a_cancelled_send_leaves_no_reply(
    redis: Any, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dispytch.redis")
    heard = f"heard_{uid}"
    pubsub = redis.pubsub()
    await pubsub.subscribe(heard)
    await pubsub.get_message(timeout=5)
    async with FaultyProxy(6379) as proxy:
        client = redis_asyncio.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        producer = RedisProducer(client)
        try:
            await producer.send(heard, b"warm-up")  # connected
            # A send cancelled while its reply is held: the reply (0 receivers) must not be
            # read as the reply of the next send, which one subscriber hears.
            proxy.stall()
            lost = asyncio.create_task(producer.send(f"nobody_{uid}", b"x"))
            await asyncio.sleep(0.1)
            lost.cancel()
            await asyncio.gather(lost, return_exceptions=True)
            proxy.resume()
            caplog.clear()
            await producer.send(heard, b"after")
            assert not [r for r in caplog.records if "no subscriber" in r.getMessage()]

            proxy.stall()
            sending = asyncio.create_task(producer.send(heard, b"last"))
            await asyncio.sleep(0.1)
            closing = asyncio.create_task(producer.close())
            await asyncio.sleep(0.1)
            assert not closing.done()  # the send in flight is waited for
            proxy.resume()
            await asyncio.wait_for(asyncio.gather(sending, closing), 5)
            with pytest.raises(EmitError, match="closed"):
                await producer.send(heard, b"late")
        finally:
            await producer.close()
            await client.aclose()
    got = []
    while len(got) < 3:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert msg is not None, f"only {got} arrived"
        got.append(msg["data"])
    assert got == [b"warm-up", b"after", b"last"]
    await pubsub.aclose()


async def test_unreachable_redis_raises_emit_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = redis_asyncio.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(EmitError, match="check that Redis is running"):
        await RedisProducer(client).send("t", b"x")
    backend = RedisBackend(f"redis://:hunter2@127.0.0.1:{port}/0")
    with pytest.raises(RedisUnavailableError) as info:
        await backend.connect()
    assert "hunter2" not in str(info.value)
    await backend.close()
    await client.aclose()


async def test_silent_server_raises_producer_timeout() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # read everything, never answer
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = redis_asyncio.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(ProducerTimeout):
            await RedisProducer(client, timeout=0.2).send("t", b"x")
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


class _CuttableProxy:
    """A TCP proxy to the local Redis whose connections a test can cut and refuse, so an outage
    hits only this test's client, not the shared server."""

    def __init__(self) -> None:
        self.accepting = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def cut(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def close(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_consumer_backs_off_during_an_outage_then_recovers(
    redis: Any, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"outage_{uid}"
    got: list[bytes] = []
    proxy = _CuttableProxy()
    await proxy.start()
    client = redis_asyncio.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
    pubsub = client.pubsub()
    await pubsub.subscribe(topic)
    consumer = RedisConsumer(pubsub, reconnect_max_delay=0.2, poll_interval=0.2)
    listener = EventListener(consumer)

    @listener.handler(topic=topic, event="e")
    async def handle(event: Event[dict]) -> None:
        got.append(event.body["n"])

    def payload(n: int) -> bytes:
        return b'{"id":"%d","type":"e","body":{"n":%d},"timestamp":1}' % (n, n)

    task = await _listening(listener)
    await redis.publish(topic, payload(1))
    await wait_until(lambda: got == [1], what="the first event")

    proxy.accepting = False
    await proxy.cut()

    def lost() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "reconnecting in" in r.getMessage()]

    await wait_until(lambda: len(lost()) >= 5, what="several failed reconnection attempts")
    assert consumer.reconnects == 0
    proxy.accepting = True
    await wait_until(lambda: consumer.reconnects == 1, what="the reconnect")

    await eventually(lambda: _subscribers(redis, topic, 1), "the resubscription")
    await redis.publish(topic, payload(2))
    await wait_until(lambda: got == [1, 2], what="the event after the outage")
    # Attempt numbers grow by one per line, and waits stay under the cap (+50% jitter).
    records = lost()
    assert [r.args[4] for r in records] == list(range(1, len(records) + 1))  # type: ignore[index]
    assert all(0 < r.args[3] <= 0.3 for r in records)  # type: ignore[index,operator]
    assert "connection lost" in records[0].getMessage()
    assert all("still down" in r.getMessage() for r in records[1:])

    await _stopped(listener, task)
    assert consumer._reader is not None and consumer._reader.done()
    await pubsub.aclose()
    await client.aclose()
    await proxy.close()


async def test_a_full_read_ahead_buffer_drops_loudly_keeps_order_and_stays_connected(
    redis: Any, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Pub/Sub has no backpressure: a reader that stopped would get the subscriber cut by Redis
    # (client-output-buffer-limit). It keeps reading and drops what does not fit, counted.
    topic = f"buf_{uid}"
    pubsub = redis.pubsub()
    consumer = RedisConsumer(pubsub, buffer_size=4)
    await consumer.start([TopicPattern.parse(topic)])
    pipe = redis.pipeline(transaction=False)
    for i in range(200):
        pipe.publish(topic, str(i).encode())
    assert await pipe.execute() == [1] * 200
    got: list[int] = []
    stream = consumer.listen()
    async with asyncio.timeout(10):
        async for message in stream:
            assert len(consumer._buffer) <= 4
            got.append(int(message.payload))
            await asyncio.sleep(0.001)  # a slow handler: the reader outruns it
            if len(got) + consumer.dropped == 200:
                break
    assert consumer.dropped > 0 and got == sorted(got) and got[0] == 0
    assert message.topic == topic and message.key is None and message.partition is None
    full = [r for r in caplog.records if "read-ahead buffer full" in r.getMessage()]
    assert len(full) == 1 and full[0].levelname == "ERROR"  # one line per 10 s, not per drop
    assert consumer.reconnects == 0
    await stream.aclose()  # type: ignore[attr-defined]
    await consumer.close()
    assert consumer._reader is not None and consumer._reader.done()
    await pubsub.aclose()


async def test_a_burst_longer_than_a_read_batch_arrives_whole_and_in_order(
    redis: Any, uid: str
) -> None:
    # The reader drains what the socket already holds in batches; a channel the user gave a
    # redis-py handler still goes to that handler, and closing does not wait for the poll.
    topic, handled = f"burst_{uid}", f"burst_handled_{uid}"
    seen_by_handler: list[bytes] = []
    pubsub = redis.pubsub()
    await pubsub.subscribe(topic, **{handled: lambda m: seen_by_handler.append(m["data"])})
    consumer = RedisConsumer(pubsub, poll_interval=30)
    await consumer.start([])
    pipe = redis.pipeline(transaction=False)
    for i in range(1000):
        pipe.publish(topic, str(i).encode())
        if i % 100 == 0:
            pipe.publish(handled, str(i).encode())
    await pipe.execute()
    got: list[int] = []
    stream = consumer.listen()
    async with asyncio.timeout(10):
        async for message in stream:
            assert message.topic == topic
            got.append(int(message.payload))
            if len(got) == 1000:
                break
    assert got == list(range(1000))
    assert seen_by_handler == [str(i).encode() for i in range(0, 1000, 100)]
    await stream.aclose()  # type: ignore[attr-defined]
    async with asyncio.timeout(5):  # far less than poll_interval
        await consumer.close()
    assert consumer._reader is not None and consumer._reader.done()
    await pubsub.aclose()
