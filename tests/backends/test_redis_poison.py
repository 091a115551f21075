"""Poison input on Redis Pub/Sub and Streams, published with redis-py itself (not Dispytch):
channel and stream names that are not UTF-8, entries Dispytch cannot read, dead-letter
destinations Redis refuses, duplicate deliveries, read-ahead bounded in bytes.

Each case is followed by a good event: it must be handled, the bad one dead-lettered (or counted
as skipped), the consumer alive, and after a restart the next events handled too.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dispytch import App, Event
from dispytch.errors import EmitError
from dispytch.listener.consumer import Failure, Message
from dispytch.routing import TopicPattern
from tests.backends.slow_reader import BIG, read_slowly
from tests.helpers import eventually, require_broker, wait_until

redis_asyncio = pytest.importorskip("redis.asyncio")

from dispytch.redis import RedisConsumer  # noqa: E402
from dispytch.redis.dead_letters import fallback_stream, read_dead_letters  # noqa: E402
from dispytch.redis.streams import RedisStreamsConsumer  # noqa: E402

pytestmark = pytest.mark.timeout(90)

PUBSUB_URL = "redis://127.0.0.1:6379/0"
STREAMS_URL = "redis+streams://127.0.0.1:6379/0"
BAD = b"\xff\xfe"


def envelope(n: int | str) -> bytes:
    return b'{"id":"%s","type":"e","body":{"n":"%s"},"timestamp":1}' % (
        str(n).encode(),
        str(n).encode(),
    )


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def redis(uid: str) -> AsyncIterator[Any]:
    """A raw client; on teardown it deletes every key holding the test's uid."""
    require_broker("redis", 6379)
    client = redis_asyncio.Redis.from_url(PUBSUB_URL)
    yield client
    keys = [key async for key in client.scan_iter(match=f"*{uid}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def _streams() -> None:
    require_broker("redis_streams", 6379)


async def _fallback(redis: Any, group: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return list(await redis.xrange(fallback_stream(group), "-", "+"))


def _app(url: str, group: str, got: list[str], topic: str) -> App:
    app = App(url, group=group, shutdown_timeout=5.0)

    @app.handler(topic=topic, event="e")
    async def handle(event: Event[dict]) -> None:
        got.append(event.body["n"])

    return app


# -- item 1: names that are not UTF-8 ------------------------------------------------------------


async def test_pubsub_channel_not_utf8_is_dead_lettered_and_the_next_event_handled(
    redis: Any, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    group, got = f"g_{uid}", []
    app = _app(PUBSUB_URL, group, got, f"chan_{uid}:{{k}}")
    await app.start()
    bad_channel = f"chan_{uid}:".encode() + BAD
    assert await redis.publish(bad_channel, envelope("bad")) == 1
    assert await redis.publish(f"chan_{uid}:ok", envelope(1)) == 1
    await wait_until(lambda: got == ["1"], what="the good event")

    async def stored() -> bool:
        return len(await _fallback(redis, group)) == 1

    await eventually(stored, "the dead letter in the fallback stream")
    [(_, fields)] = await _fallback(redis, group)
    assert fields[b"payload"] == envelope("bad")
    assert fields[b"h:x-dispytch-reason"] == b"decode"
    assert fields[b"h:x-dispytch-undecodable"] == b"topic"
    assert base64.b64decode(fields[b"h:x-dispytch-original-topic-b64"]) == bad_channel
    assert fields[b"h:x-dispytch-original-topic"] == f"chan_{uid}:\\xff\\xfe".encode()
    assert any(r.levelname == "ERROR" and "not UTF-8" in r.getMessage() for r in caplog.records)
    assert app.listener is not None and app.listener.consumer.skipped == 0  # type: ignore[attr-defined]
    await app.stop()

    # Restarted, it handles new events (Pub/Sub keeps nothing: the bad one is gone for good).
    app = _app(PUBSUB_URL, group, got, f"chan_{uid}:{{k}}")
    await app.start()
    await redis.publish(bad_channel, envelope("bad2"))
    await redis.publish(f"chan_{uid}:ok", envelope(2))
    await wait_until(lambda: got == ["1", "2"], what="the event after the restart")
    await eventually(lambda: _count(redis, group, 2), "the second dead letter")
    await app.stop()
    await redis.delete(fallback_stream(group))


async def test_a_seed_client_that_decodes_responses_skips_what_it_cannot_decode(
    redis: Any, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Its own parser fails on the channel before the consumer sees it: the consumer counts
    # the message as skipped, says how to keep such messages, and keeps reading.
    name = f"dr_{uid}"
    client = redis_asyncio.Redis.from_url(PUBSUB_URL, decode_responses=True, client_name=name)
    consumer = RedisConsumer(client.pubsub(), reconnect_max_delay=0.1)
    await consumer.start([TopicPattern.parse(f"dr_{uid}:{{k}}")])
    await redis.publish(f"dr_{uid}:".encode() + BAD, b"bad")
    stream = consumer.listen()
    first = asyncio.ensure_future(anext(stream))
    await wait_until(lambda: consumer.skipped == 1 and consumer.reconnects == 1, what="a skip")
    await eventually(lambda: _subscribed(redis, name), "the subscription renewed")
    await redis.publish(f"dr_{uid}:ok", b"good")
    message = await asyncio.wait_for(first, 10)
    assert (message.topic, message.payload) == (f"dr_{uid}:ok", b"good")
    assert any("decode_responses=False" in r.getMessage() for r in caplog.records)
    await stream.aclose()  # type: ignore[attr-defined]
    await consumer.close()
    await client.aclose()


async def _subscribed(redis: Any, client_name: str) -> bool:
    clients = await redis.client_list(_type="pubsub")
    return any(c.get("name") == client_name and c.get("psub") == "1" for c in clients)


async def _count(redis: Any, group: str, n: int) -> bool:
    return len(await _fallback(redis, group)) == n


async def test_streams_key_not_utf8_is_dead_lettered_acked_and_not_seen_after_restart(
    redis: Any, uid: str
) -> None:
    _streams()
    group, got = f"g_{uid}", []
    bad_key = f"st_{uid}:".encode() + BAD
    await redis.xadd(bad_key, {b"payload": envelope("bad"), b"h:trace": b"t-1"})
    await redis.xadd(f"st_{uid}:ok", {b"payload": envelope(1)})
    app = _app(STREAMS_URL, group, got, f"st_{uid}:{{k}}")
    await app.start()
    await wait_until(lambda: got == ["1"], what="the good entry")
    await eventually(lambda: _count(redis, group, 1), "the dead letter in the fallback stream")

    async def acked() -> bool:
        return int((await redis.xpending(bad_key, group))["pending"]) == 0

    await eventually(acked, "the unreadable entry to be acknowledged")
    [(_, fields)] = await _fallback(redis, group)
    assert fields[b"payload"] == envelope("bad")
    assert fields[b"h:trace"] == b"t-1"  # the original headers are kept
    assert base64.b64decode(fields[b"h:x-dispytch-original-topic-b64"]) == bad_key
    assert fields[b"h:x-dispytch-original-id"]
    assert bad_key in app.listener.consumer.streams  # type: ignore[union-attr]
    await app.stop()

    # A restart neither crashes on the key nor dead-letters the entry again.
    app = _app(STREAMS_URL, group, got, f"st_{uid}:{{k}}")
    await app.start()
    await redis.xadd(f"st_{uid}:ok", {b"payload": envelope(2)})
    await wait_until(lambda: got == ["1", "2"], what="the entry after the restart")
    assert len(await _fallback(redis, group)) == 1
    await app.stop()
    await redis.delete(fallback_stream(group))


async def test_streams_entries_without_payload_or_with_binary_headers_are_dead_lettered(
    redis: Any, uid: str
) -> None:
    _streams()
    topic, group, got = f"fields_{uid}", f"g_{uid}", []
    await redis.xadd(topic, {b"other": BAD, BAD: b"v"})
    await redis.xadd(topic, {b"payload": envelope("h1"), b"h:" + BAD: b"v", b"h:ok": b"k"})
    await redis.xadd(topic, {b"payload": envelope("h2"), b"h:name": BAD})
    await redis.xadd(topic, {b"payload": envelope(1), b"extra": BAD})  # extra fields: ignored
    app = _app(STREAMS_URL, group, got, topic)
    await app.start()
    await wait_until(lambda: got == ["1"], what="the readable entry")

    async def three() -> bool:
        return int(await redis.xlen(f"{topic}.dlq")) == 3

    await eventually(three, "three dead letters")
    # Dead-lettered by the listener concurrently: in any order.
    dead = sorted(
        await read_dead_letters(redis, topic), key=lambda d: (d.payload != b"", d.payload)
    )
    assert [d.headers["x-dispytch-undecodable"] for d in dead] == ["payload", "headers", "headers"]
    assert all(d.reason == "decode" and d.error.startswith("UndecodableMetadata") for d in dead)
    assert dead[0].payload == b""
    kept = sorted(v for k, v in dead[0].headers.items() if "undecodable-header" in k)
    decoded = sorted(tuple(base64.b64decode(p) for p in v.split(":")) for v in kept)
    assert decoded == sorted([(b"other", BAD), (BAD, b"v")])
    assert dead[1].payload == envelope("h1") and dead[1].headers["ok"] == "k"
    name, value = next(v for k, v in dead[2].headers.items() if "undecodable-header" in k).split(
        ":"
    )
    assert (base64.b64decode(name), base64.b64decode(value)) == (b"h:name", BAD)

    async def acked() -> bool:
        return int((await redis.xpending(topic, group))["pending"]) == 0

    await eventually(acked, "every entry acknowledged")
    await app.stop()


# -- items 6 and 7: dead-letter destinations, original headers -----------------------------------


def _failure() -> Failure:
    return Failure("handler", "RuntimeError", "boom", "h", 3, 1)


async def test_a_refused_dead_letter_stream_fails_fast_and_the_fallback_takes_it(
    redis: Any, uid: str
) -> None:
    # "{topic}.dlq" is a string key: XADD is refused. dead_letter says so at once; the
    # group's fallback stream takes the message, and dead_letters(topic) finds it there.
    _streams()
    topic, group = f"refused_{uid}", f"g_{uid}"
    await redis.set(f"{topic}.dlq", b"not a stream")
    client = redis_asyncio.Redis.from_url(PUBSUB_URL)
    consumers: list[Any] = [
        RedisConsumer(client.pubsub(), redis=client, group=group),
        RedisStreamsConsumer(client, group=group),
    ]
    message = Message(topic, b"raw", b"k", {"trace": "t-9"}, extra="1-1")
    for consumer in consumers:
        started = time.monotonic()
        with pytest.raises(EmitError, match=f"refused the dead letter for stream {topic}.dlq"):
            await consumer.dead_letter(message, _failure())
        assert time.monotonic() - started < 2
        assert await consumer.dead_letter_fallback(message, _failure()) is True
    entries = await _fallback(redis, group)
    assert len(entries) == 2
    for _, fields in entries:
        assert fields[b"h:x-dispytch-original-topic"] == topic.encode()
        assert fields[b"h:trace"] == b"t-9" and fields[b"payload"] == b"raw"
    assert [d.payload for d in await read_dead_letters(redis, topic)] == [b"raw", b"raw"]
    await client.aclose()
    await redis.delete(fallback_stream(group))


async def test_dead_letters_keep_the_original_headers(redis: Any, uid: str) -> None:
    _streams()
    topic, group = f"hdr_{uid}", f"g_{uid}"
    app = App(STREAMS_URL, group=group)

    @app.handler(topic=topic, event="e")
    async def broken(event: Event[dict]) -> None:
        raise RuntimeError("boom")

    await redis.xadd(
        topic,
        {b"payload": envelope(1), b"h:traceparent": b"00-abc-01", b"h:x-dispytch-reason": b"x"},
    )
    await app.start()

    async def stored() -> bool:
        return int(await redis.xlen(f"{topic}.dlq")) == 1

    await eventually(stored, "the dead letter")
    [dead] = await app.backend.dead_letters(topic)
    assert dead.headers["traceparent"] == "00-abc-01"
    assert dead.reason == "handler"  # a forged failure header never wins
    await app.stop()


# -- item 12: one delivery per subscriber ---------------------------------------------------------


async def test_pubsub_delivers_a_message_once_when_several_subscriptions_match(
    redis: Any, uid: str
) -> None:
    calls: list[tuple[str, str]] = []
    app = App(PUBSUB_URL, group=f"g_{uid}")

    @app.handler(topic=f"o_{uid}:eu:new", event="e")
    async def literal(event: Event[dict]) -> None:
        calls.append(("literal", event.body["n"]))

    @app.handler(topic=f"o_{uid}:{{region}}:new", event="e")
    async def one_segment(event: Event[dict]) -> None:
        calls.append(("region", event.body["n"]))

    @app.handler(topic=f"o_{uid}:{{region}}:{{state}}", event="e")
    async def two_segments(event: Event[dict]) -> None:
        calls.append(("both", event.body["n"]))

    await app.start()
    await redis.publish(f"o_{uid}:eu:new", envelope(1))  # literal + 2 patterns: 3 copies
    await redis.publish(f"o_{uid}:us:new", envelope(2))  # 2 patterns: 2 copies
    await redis.publish(f"o_{uid}:us:old", envelope(3))  # 1 pattern
    await redis.publish(f"o_{uid}:eu:new", envelope(4))
    await redis.publish(f"o_{uid}:us:old", envelope("end"))
    # Redis sends the copies of a publish together, before the next publish: once the last
    # event is handled and nothing is in flight, every copy of the others has been seen.
    await wait_until(lambda: ("both", "end") in calls, what="the last event")
    await wait_until(lambda: app.listener is not None and app.listener.in_flight == 0)
    want = [
        ("literal", "1"), ("region", "1"), ("both", "1"),
        ("region", "2"), ("both", "2"),
        ("both", "3"),
        ("literal", "4"), ("region", "4"), ("both", "4"),
        ("both", "end"),
    ]  # fmt: skip
    assert sorted(calls) == sorted(want)
    await app.stop()


# -- item 9: read-ahead bounded in bytes ---------------------------------------------------------

# Another process publishes, as in production: a publisher sharing the consumer's event loop
# also starves its reader.
# It publishes at about 90 MB/s, far more than the slow handler takes and well within what the
# reader reads (Redis cuts a subscriber that falls 32 MB behind in reading, whatever it buffers).
_PUBLISHER = """
import sys, time, redis
client, payload = redis.Redis(port=6379), b"x" * int(sys.argv[2])
for _ in range(40):  # 200 messages, 5 per round trip
    pipe = client.pipeline(transaction=False)
    for _ in range(5):
        pipe.publish(sys.argv[1], payload)
    pipe.execute()
    time.sleep(0.05)
"""


async def test_pubsub_read_ahead_is_bounded_in_bytes_under_large_messages(
    redis: Any, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic, bound = f"big_{uid}", 8 * 1024 * 1024
    client = redis_asyncio.Redis.from_url(PUBSUB_URL)
    consumer = RedisConsumer(client.pubsub(), max_buffer_bytes=bound)
    await consumer.start([TopicPattern.parse(topic)])
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PUBLISHER, topic, str(BIG)
    )
    peaks = await read_slowly(
        consumer,
        lambda message: consumer.buffered_bytes,
        lambda got: got + consumer.dropped >= 200,
    )
    assert await publisher.wait() == 0
    assert peaks.held <= bound + BIG
    assert consumer.dropped > 0 and consumer.reconnects == 0
    # 200 x 900 KB = 180 MB if everything were held; generous margin for the client's buffers.
    assert peaks.rss_growth < 100 * 1024 * 1024, peaks.rss_growth // 2**20
    assert any("read-ahead buffer full" in r.getMessage() for r in caplog.records)
    await consumer.close()
    await client.aclose()


async def test_streams_read_ahead_is_bounded_in_bytes(redis: Any, uid: str) -> None:
    _streams()
    topic, bound = f"bigst_{uid}", 3 * BIG
    payload = b"x" * BIG
    for _ in range(4):
        pipe = redis.pipeline(transaction=False)
        for _ in range(10):
            pipe.xadd(topic, {b"payload": payload})
        await pipe.execute()
    client = redis_asyncio.Redis.from_url(PUBSUB_URL)
    consumer = RedisStreamsConsumer(client, group=f"g_{uid}", prefetch=64, max_buffer_bytes=bound)
    await consumer.start([TopicPattern.parse(topic)])
    peaks = await read_slowly(
        consumer, lambda message: consumer.held_bytes, lambda got: got == 40, ack=True
    )
    assert peaks.held <= bound + BIG
    await consumer.close()
    await client.aclose()
