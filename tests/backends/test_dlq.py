"""Dead letters operated on live brokers: listed, shown, filtered, replayed after a fix, purged;
``dispytch dlq`` as a real process (plain output, SIGKILL mid-replay and resume, a tmux
terminal); broker-delayed retries.

Backends: memory always; redis_streams and nats when listed in ``DISPYTCH_BROKERS``.
"""

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dispytch import App, Event, EventBase
from dispytch.dlq import REPLAY_COUNT_HEADER, Selection, event_id, open_store
from tests.helpers import eventually, require_broker, wait_until

pytestmark = pytest.mark.timeout(120)

SRC = str(Path(__file__).resolve().parents[2] / "src")


@dataclass(frozen=True)
class Live:
    name: str
    url: str
    port: int | None
    delimiter: str

    def collector(self, topic: str) -> str:
        """A ``--to`` destination whose messages :func:`collected` reads back."""
        if self.name == "nats":
            return f"dispytch_dlq.{topic}"  # read back as dead letters of ``topic``
        if self.name in ("redis_streams", "memory"):
            return f"{topic}.dlq"
        return topic

    def group_args(self, group: str) -> list[str]:
        """``--group`` where the backend keeps dead letters per group (RabbitMQ)."""
        return ["--group", group] if self.name == "rabbitmq" else []


async def kafka_records(topic: str) -> list[tuple[bytes, dict]]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092")
    await producer.start()
    try:
        partitions = await producer.partitions_for(topic)
    finally:
        await producer.stop()
    reader = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9092", enable_auto_commit=False)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        end = await reader.end_offsets(tps)
        out: list[tuple[bytes, dict]] = []
        for tp in tps:
            while await reader.position(tp) < end[tp]:
                batches = await reader.getmany(tp, timeout_ms=1000)
                out += [
                    (r.value, {k: v.decode() for k, v in r.headers})
                    for r in batches.get(tp, ())
                    if r.offset < end[tp]
                ]
        return out
    finally:
        await reader.stop()


async def rabbitmq_dead_letter(
    live: Live, group: str, payload: bytes, headers: dict[str, str]
) -> None:
    """Put a message straight into ``group``'s RabbitMQ dead-letter queue."""
    import aio_pika

    from dispytch.rabbitmq.dead_letters import dead_letter_queue

    connection = await aio_pika.connect(live.url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(dead_letter_queue(group), durable=True)
        message = aio_pika.Message(payload, headers=headers)  # type: ignore[arg-type]
        await channel.default_exchange.publish(message, routing_key=queue.name)


async def prepare_collector(live: Live, topic: str) -> None:
    """Make ``live.collector(topic)`` keep what is published to it."""
    if live.name == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(live.url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                "dispytch", aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(f"collect-{topic}", durable=True)
            await queue.bind(exchange, routing_key=topic)


async def collected_of(live: Live, topic: str, purge: bool = False) -> list[tuple[bytes, dict]]:
    """(payload, headers) of everything published to ``live.collector(topic)``."""
    if live.name == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(live.url)
        out: list[tuple[bytes, dict]] = []
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"collect-{topic}", durable=True)
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                out.append((message.body, dict(message.headers or {})))
            if purge:
                await queue.delete(if_unused=False, if_empty=False)
        return out
    if live.name == "kafka":
        return await kafka_records(topic)
    async with open_store(live.url) as store:
        letters = await store.read(Selection.build(topics=[topic]), limit=100_000)
        if purge:
            await store.purge(Selection.build(topics=[topic]))
    return [(d.payload, dict(d.headers)) for d in letters]


BACKENDS = {
    "memory": Live("memory", "memory://", None, ":"),
    "redis_streams": Live("redis_streams", "redis+streams://127.0.0.1:6379/0", 6379, ":"),
    "nats": Live("nats", "nats://127.0.0.1:4222", 4222, "."),
    "rabbitmq": Live("rabbitmq", "amqp://guest:guest@127.0.0.1:5672/", 5672, "."),
    "kafka": Live("kafka", "kafka://127.0.0.1:9092", 9092, "."),
}
PROCESS_BACKENDS = [name for name in BACKENDS if name != "memory"]


@pytest.fixture(params=list(BACKENDS))
def live(request: pytest.FixtureRequest) -> Live:
    spec = BACKENDS[request.param]
    if spec.port is not None:
        require_broker(spec.name, spec.port)
    return spec


@pytest.fixture(params=PROCESS_BACKENDS)
def process_live(request: pytest.FixtureRequest) -> Live:
    spec = BACKENDS[request.param]
    assert spec.port is not None
    require_broker(spec.name, spec.port)
    return spec


@pytest.fixture
async def uid() -> AsyncIterator[str]:
    """A fresh id for names; Redis keys holding it are deleted afterwards."""
    value = uuid.uuid4().hex[:10]
    yield value
    if "redis_streams" in os.environ.get("DISPYTCH_BROKERS", ""):
        from redis.asyncio import Redis

        client = Redis.from_url("redis://127.0.0.1:6379/0")
        keys = [key async for key in client.scan_iter(match=f"*{value}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def event_classes(uid: str) -> tuple[type[EventBase], type[EventBase]]:
    class Order(EventBase):
        __topic__ = f"dlq_orders_{uid}"
        __event_type__ = "created"
        n: int

    class Refund(EventBase):
        __topic__ = f"dlq_refunds_{uid}"
        __event_type__ = "made"
        n: int

    return Order, Refund


@dataclass
class Scene:
    app: App
    orders: str
    refunds: str
    fail: set[int]
    handled: list[int]


@pytest.fixture
async def scene(live: Live, uid: str) -> AsyncIterator[Scene]:
    """An app whose handlers fail for the numbers in ``fail``, on a fresh group and topics."""
    order, refund = event_classes(uid)
    url = f"memory://dlq-{uid}" if live.name == "memory" else live.url
    app = App(url, group=f"dlq-{uid}")
    found = Scene(app, order.__topic__, refund.__topic__, set(), [])

    @app.handler(topic=order.__topic__, event="created")
    async def charge(event: Event[order]) -> None:  # type: ignore[valid-type]
        n = event.body.n  # type: ignore[attr-defined]
        if n in found.fail:
            raise ValueError(f"charge failed for {n}")
        found.handled.append(n)

    @app.handler(topic=refund.__topic__, event="made")
    async def pay_back(event: Event[refund]) -> None:  # type: ignore[valid-type]
        n = event.body.n  # type: ignore[attr-defined]
        if n in found.fail:
            raise KeyError(f"refund failed for {n}")
        found.handled.append(n)

    yield found
    if app.started:
        await app.stop()
    async with open_store(app) as store:
        await store.purge(Selection.build(topics=[found.orders, found.refunds]))


async def dead_letters(
    source: App | str, topics: list[str], count: int, group: str | None = None
) -> None:
    async def enough() -> bool:
        async with open_store(source, group=group) as store:
            return await store.count(Selection.build(topics=topics)) >= count

    await eventually(enough, f"{count} dead letters", timeout=30)


async def test_dead_letters_listed_shown_filtered_replayed_and_purged(scene: Scene) -> None:
    order, refund = event_classes(scene.orders.rsplit("_", 1)[-1])
    app = scene.app
    scene.fail.update({0, 1, 2, 10, 11})
    envelope = json.dumps({"id": "bad-body", "type": "created", "body": {"n": "x"}}).encode()
    async with app:
        await app.emit_many([order(n=n) for n in (0, 1, 2, 3)])
        await app.emit_many([refund(n=n) for n in (10, 11)])
        producer = app.backend.producer()
        await producer.send(scene.orders, b"\xff\xfe not an envelope")
        await producer.send(scene.orders, envelope)
        await dead_letters(app, [scene.orders, scene.refunds], 7)
        async with open_store(app) as store:
            selection = Selection.build(topics=[scene.orders, scene.refunds])
            by_topic = {s.topic: s for s in await store.list(selection)}
            assert by_topic[scene.orders].count == 5
            assert by_topic[scene.orders].reasons == {"handler": 3, "decode": 1, "validation": 1}
            assert by_topic[scene.refunds].reasons == {"handler": 2}
            assert all(s.oldest and s.newest and s.oldest <= s.newest for s in by_topic.values())

            undecodable = await store.read(
                Selection.build(topics=[scene.orders], reasons=["decode"])
            )
            assert [d.payload for d in undecodable] == [b"\xff\xfe not an envelope"]
            refunds = await store.read(
                Selection.build(error_types=["KeyError"], topics=[scene.refunds])
            )
            assert len(refunds) == 2
            assert all((d.handler or "").endswith("pay_back") for d in refunds)
            one = refunds[0]
            by_id = await store.read(Selection.build(event_ids=[event_id(one.payload) or "?"]))
            assert [d.payload for d in by_id] == [one.payload]

            # The handlers are fixed: replay the handler failures of orders.
            scene.fail.clear()
            report = await store.replay(
                Selection.build(topics=[scene.orders], reasons=["handler"]), batch=2
            )
            assert (report.selected, report.replayed, report.failed) == (3, 3, 0)
            await wait_until(lambda: sorted(scene.handled) == [0, 1, 2, 3], what="replays")
            left = {s.topic: dict(s.reasons) for s in await store.list(selection)}
            assert left == {
                scene.orders: {"decode": 1, "validation": 1},
                scene.refunds: {"handler": 2},
            }
            purged = await store.purge(Selection.build(topics=[scene.orders], reasons=["decode"]))
            assert purged.removed == 1
            left = {s.topic: dict(s.reasons) for s in await store.list(selection)}
            assert left == {scene.orders: {"validation": 1}, scene.refunds: {"handler": 2}}


async def test_replayed_events_keep_their_id_and_count_replays(scene: Scene) -> None:
    order, _ = event_classes(scene.orders.rsplit("_", 1)[-1])
    app = scene.app
    scene.fail.add(5)
    async with app:
        event = order(n=5)
        await app.emit(event)
        await dead_letters(app, [scene.orders], 1)
        async with open_store(app) as store:
            selection = Selection.build(topics=[scene.orders])
            await store.replay(selection)  # fails again: a second dead letter
            await dead_letters(app, [scene.orders], 1)
            (again,) = await store.read(selection)
            assert event_id(again.payload) == event.id
            assert again.headers.get("x-dispytch-forwarded-replay-count") == "1"
            scene.fail.clear()
            await store.replay(selection)
            await wait_until(lambda: scene.handled == [5], what="the second replay")
            assert await store.count(selection) == 0


# -- the CLI as a process ---------------------------------------------------------------------


def cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "DISPYTCH_LOG_LEVEL": "WARNING"}
    env.pop("DISPYTCH_BROKER_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "dispytch", "dlq", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,  # type: ignore[arg-type]
    )


def run_cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = cli(*args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


async def make_dead_letters(live: Live, topic: str, count: int) -> list[str]:
    """``count`` handler failures on ``topic``; returns their event ids."""
    app = App(live.url, group=f"mk-{topic}")

    class Item(EventBase):
        __topic__ = topic
        __event_type__ = "item"
        n: int

    @app.handler(topic=topic, event="item")
    async def always_fails(event: Event[Item]) -> None:
        raise ValueError("not yet")

    events = [Item(n=n) for n in range(count)]
    async with app:
        for start in range(0, count, 200):
            await app.emit_many(events[start : start + 200])
        await dead_letters(live.url, [topic], count, group=f"mk-{topic}")
    return [e.id for e in events]


async def test_cli_lists_shows_and_purges_with_plain_output(process_live: Live, uid: str) -> None:
    topic = f"dlq_cli_{uid}"
    await make_dead_letters(process_live, topic, 3)
    url = process_live.url
    group = process_live.group_args(f"mk-{topic}")
    code, out, err = await asyncio.to_thread(
        run_cli, "list", "--broker-url", url, "--topic", topic, *group
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TOPIC", "COUNT", "OLDEST", "NEWEST", "REASONS", "DESTINATIONS"]
    assert lines[1].split()[:2] == [topic, "3"]
    assert "handler=3" in lines[1]
    assert "\x1b" not in out and "\r" not in out

    code, out, err = await asyncio.to_thread(
        run_cli, "show", "--broker-url", url, "--topic", topic, "--json", "--limit", "2", *group
    )
    assert code == 0, err
    shown = json.loads(out)
    assert len(shown) == 2
    assert shown[0]["topic"] == topic
    assert shown[0]["headers"]["x-dispytch-reason"] == "handler"
    assert shown[0]["envelope"]["type"] == "item"

    code, out, err = await asyncio.to_thread(
        run_cli, "purge", "--broker-url", url, "--topic", topic, *group
    )
    assert code == 2 and "--yes" in err  # no terminal to ask on
    code, out, _ = await asyncio.to_thread(
        run_cli,
        "purge",
        "--broker-url",
        url,
        "--topic",
        topic,
        "--reason",
        "decode",
        "--yes",
        *group,
    )
    assert (code, out) == (0, "no dead letters selected\n")
    code, out, _ = await asyncio.to_thread(
        run_cli, "purge", "--broker-url", url, "--topic", topic, "--yes", *group
    )
    assert (code, out) == (0, "removed 3 dead letter(s)\n")


async def test_cli_replay_killed_then_resumed_loses_nothing(process_live: Live, uid: str) -> None:
    """SIGKILL mid-replay, then the same command again: every event is replayed, at most one
    batch of them twice."""
    topic = f"dlq_kill_{uid}"
    collected = f"dlq_kill_out_{uid}"
    total, batch = 150, 10
    ids = await make_dead_letters(process_live, topic, total)
    await prepare_collector(process_live, collected)
    url = process_live.url
    args = ["replay", "--broker-url", url, "--topic", topic, "--batch", str(batch)]
    args += ["--to", process_live.collector(collected), *process_live.group_args(f"mk-{topic}")]
    proc = cli(*args, "--rate", "50/s")
    assert proc.stderr is not None
    # Plain progress lines (no terminal): wait for one that says some were replayed.
    progress = re.compile(r"^replayed (\d+) of " + str(total))
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 20 and time.monotonic() < deadline:
        line = await asyncio.to_thread(proc.stderr.readline)
        assert line, "the replay ended before it was killed"
        match = progress.match(line)
        if match:
            seen = int(match.group(1))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    async with open_store(url, group=f"mk-{topic}") as store:
        left = await store.count(Selection.build(topics=[topic]))
    copies = await collected_of(process_live, collected)
    assert 0 < left < total
    # Nothing lost: each event is still a dead letter or was published (or both, in flight).
    assert len(copies) >= total - left
    assert len(copies) <= total - left + batch

    code, out, err = await asyncio.to_thread(run_cli, *args)
    assert code == 0, err
    assert out.startswith(f"replayed {left} of {left} selected")
    async with open_store(url, group=f"mk-{topic}") as store:
        assert await store.count(Selection.build(topics=[topic])) == 0
    copies = await collected_of(process_live, collected, purge=True)
    replayed = [event_id(payload) for payload, _ in copies]
    assert set(replayed) == set(ids)
    doubled = len(replayed) - total
    assert 0 <= doubled <= batch
    assert all(str(headers.get(REPLAY_COUNT_HEADER)) == "1" for _, headers in copies)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_cli_replay_progress_bar_in_a_terminal(process_live: Live, uid: str) -> None:
    topic = f"dlq_tty_{uid}"
    total = 40
    await make_dead_letters(process_live, topic, total)
    await prepare_collector(process_live, topic + "_out")
    session = f"dlq-{uid}"
    group = " ".join(process_live.group_args(f"mk-{topic}"))
    command = (
        f"PYTHONPATH={SRC} {sys.executable} -m dispytch dlq replay --broker-url "
        f"{process_live.url} --topic {topic} --to {process_live.collector(topic + '_out')} "
        f"{group} --rate 20/s; echo EXIT=$?; sleep 60"
    )
    tmux = ["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "20", command]
    await asyncio.to_thread(subprocess.run, tmux, check=True)
    screens: list[str] = []

    def screen() -> str:
        shot = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
        ).stdout
        screens.append(shot)
        return shot

    try:
        await wait_until(lambda: "EXIT=" in screen(), timeout=60, what="the replay to end")
    finally:
        kill = ["tmux", "kill-session", "-t", session]
        await asyncio.to_thread(subprocess.run, kill, capture_output=True)
    bars = [
        re.search(r"\[([#.]{30})\] (\d+)/" + str(total) + r" replayed (\d+)", s) for s in screens
    ]
    partial = [m for m in bars if m and 0 < int(m.group(2)) < total]
    assert partial, "no partly filled bar was drawn:\n" + screens[-1]
    assert "." in partial[0].group(1) and "#" in partial[0].group(1)
    final = screens[-1]
    assert f"[{'#' * 30}] {total}/{total} replayed {total}" in final
    assert f"replayed {total} of {total} selected" in final
    assert "EXIT=0" in final
    await collected_of(process_live, topic + "_out", purge=True)


# -- broker-delayed retries -------------------------------------------------------------------


async def test_broker_retries_free_the_slot_and_count_attempts(live: Live, uid: str) -> None:
    topic = f"dlq_retry_{uid}"

    class Job(EventBase):
        __topic__ = topic
        __event_type__ = "job"
        n: int

    url = f"memory://retry-{uid}" if live.name == "memory" else live.url
    app = App(url, group=f"retry-{uid}", concurrency=1, retry_mode="broker")
    calls: list[tuple[int, float]] = []
    started = time.monotonic()

    @app.handler(topic=topic, event="job", retries=2, retry_interval=1.0)
    async def run(event: Event[Job]) -> None:
        calls.append((event.body.n, time.monotonic() - started))
        if event.body.n == 0:
            raise ValueError("always")

    async with app:
        await app.emit(Job(n=0))
        await wait_until(lambda: len(calls) == 1, timeout=20, what="first attempt")
        await app.emit(Job(n=1))
        await wait_until(lambda: len(calls) == 2, timeout=20, what="the other event")
        # concurrency=1 and event 0 is in its back-off: event 1 ran in the free slot.
        assert [n for n, _ in calls] == [0, 1]
        await dead_letters(app, [topic], 1)
        async with open_store(app) as store:
            (letter,) = await store.read(Selection.build(topics=[topic]))
            await store.purge(Selection.build(topics=[topic]))
    attempts = [at for n, at in calls if n == 0]
    assert len(attempts) == 3
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(attempts))
    assert letter.attempts == 3
    assert letter.headers["x-dispytch-original-topic"] == topic


async def test_filtered_removal_keeps_every_other_dead_letter(live: Live, uid: str) -> None:
    """Selected dead letters interleaved with others (by reason): removing the selected ones in
    batches (purges of a subject's oldest where the backend can) never takes the others."""
    topic = f"dlq_mix_{uid}"
    url = f"memory://mix-{uid}" if live.name == "memory" else live.url
    app = App(url, group=f"mix-{uid}")
    async with app:
        producer = app.backend.producer()
        for n in range(12):
            reason = "handler" if n % 3 else "decode"
            headers = {"x-dispytch-reason": reason, "x-dispytch-original-topic": topic}
            if live.name == "rabbitmq":
                await rabbitmq_dead_letter(live, f"mix-{uid}", f"p{n}".encode(), headers)
                continue
            where = f"{topic}.dlq" if live.name == "kafka" else live.collector(topic)
            await producer.send(where, f"p{n}".encode(), headers=headers)
        async with open_store(app) as store:
            first = Selection.build(topics=[topic], reasons=["handler"])
            handler = [d.payload for d in await store.read(first)]
            assert len(handler) == 8
            # Two at a time: the first batch is the subject's oldest handler failures only
            # after p0 (a decode failure), so no purge may take p0 with them.
            purged = await store.purge(first, batch=2)
            assert purged.removed == 8
            left = [d.payload for d in await store.read(Selection.build(topics=[topic]))]
            assert left == [b"p0", b"p3", b"p6", b"p9"]
            # The oldest two, as a prefix, then the rest.
            await store.purge(Selection.build(topics=[topic]), batch=2)
            assert await store.count(Selection.build(topics=[topic])) == 0


async def test_rabbitmq_forged_retry_headers_on_a_topic_are_not_a_retry(uid: str) -> None:
    """Only what expires out of a delay queue is read as a retry: retry headers a publisher
    puts on a topic's message neither reroute it nor pick its handler."""
    require_broker("rabbitmq", 5672)
    topic, other = f"dlq_forge_{uid}", f"dlq_forge_other_{uid}"

    class Job(EventBase):
        __topic__ = topic
        __event_type__ = "job"
        n: int

    app = App(BACKENDS["rabbitmq"].url, group=f"forge-{uid}", retry_mode="broker")
    seen: list[str] = []

    @app.handler(topic=topic, event="job", retries=1)
    async def own(event: Event[Job]) -> None:
        seen.append("own")

    @app.handler(topic=other, event="job", retries=1)
    async def elsewhere(event: Event[Job]) -> None:
        seen.append("elsewhere")

    forged = {
        "x-dispytch-retry-topic": other,
        "x-dispytch-retry-handler": elsewhere.__qualname__,
        "x-dispytch-retry-attempt": "2",
    }
    async with app:
        await app.emit(Job(n=1), headers=forged)
        await wait_until(lambda: seen == ["own"], timeout=20, what="the topic's own handler")
    assert seen == ["own"]


def test_delay_tiers_have_two_significant_digits() -> None:
    from dispytch.broker_retries import tier_ms

    assert [tier_ms(d) for d in (0, 0.0004, 0.05, 1.234, 56.789, 0.1)] == [
        1,
        1,
        50,
        1200,
        57000,
        100,
    ]


async def test_rabbitmq_operations_in_a_row_see_every_dead_letter(uid: str) -> None:
    """What one operation held and handed back is there for the next one at once (RabbitMQ
    requeues asynchronously; a replay right after its count must not miss any)."""
    require_broker("rabbitmq", 5672)
    live = BACKENDS["rabbitmq"]
    group = f"row-{uid}"
    for n in range(300):
        headers = {"x-dispytch-original-topic": f"row_{uid}", "x-dispytch-reason": "handler"}
        await rabbitmq_dead_letter(live, group, f"p{n}".encode(), headers)
    async with open_store(live.url, group=group) as store:
        counts = [await store.count() for _ in range(4)]
        await store.purge()
    assert counts == [300, 300, 300, 300]


async def test_redis_pubsub_dead_letters_are_listed_but_never_replayed(uid: str) -> None:
    """Redis Pub/Sub keeps its dead letters in streams (list, show, purge work) but refuses to
    replay: an event published while nobody listens would be lost."""
    require_broker("redis", 6379)
    from dispytch.errors import ConfigurationError

    topic = f"dlq_pubsub_{uid}"
    url = "redis://127.0.0.1:6379/0"
    async with open_store(url) as store:
        producer = store.producer
        assert producer is not None
        from redis.asyncio import Redis

        client = Redis.from_url(url)
        await client.xadd(f"{topic}.dlq", {b"payload": b"p", b"h:x-dispytch-reason": b"decode"})
        await client.aclose()
        assert await store.count(Selection.build(topics=[topic])) == 1
        with pytest.raises(ConfigurationError, match="redis\\+streams://"):
            await store.replay(Selection.build(topics=[topic]))
        assert (await store.replay(Selection.build(topics=[topic]), dry_run=True)).replayed == 1
        assert (await store.purge(Selection.build(topics=[topic]))).removed == 1
