"""Delivery guarantees under faults, on the durable backends (Kafka, RabbitMQ, NATS JetStream,
Redis Streams).

Each scenario emits numbered events (every emit either confirmed or raised), runs the consumer
as its own process (``dispytch run``) whose handler records each sequence number durably before
returning, injects a fault, and checks: no confirmed event lost, duplicates within the in-flight
window (``concurrency`` per fault). Sizes: ``DISPYTCH_FAULT_EVENTS`` (default 2000),
``DISPYTCH_FAULT_BACKLOG`` (default 20000) for the backlog scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from dispytch import App
from tests.faults.conftest import Broker
from tests.faults.harness import (
    ConsumerProcess,
    Producer,
    Records,
    brokers_sh,
    check,
    dead_letters_of,
    duplicate_window,
    event_class,
    fault_backlog,
    fault_events,
    record_result,
    reset_connections,
    run,
    wait_for,
)

N = fault_events()
BACKLOG = fault_backlog()
RESETS = int(os.environ.get("DISPYTCH_FAULT_RESETS") or 2)
# Deadlines scale with the size knob; the defaults keep the whole suite within a few minutes.
DRAIN = 60.0 + N / 50
pytestmark = [pytest.mark.fault, pytest.mark.timeout(240 + N // 20)]

MakeConsumer = Callable[..., ConsumerProcess]


def _distinct(records: Records, at_least: int) -> Callable[[], bool]:
    return lambda: len(records.handled()) >= at_least


def _busy(records: Records, handled: int, in_flight: int) -> Callable[[], bool]:
    """At least ``handled`` events done and at least ``in_flight`` handlers running now."""

    def check_busy() -> bool:
        done = len(records.handled())
        return done >= handled and len(records.started()) - done >= in_flight

    return check_busy


async def _wait_all(
    records: Records, producer: Producer, consumers: list[ConsumerProcess], what: str
) -> None:
    """Wait until every confirmed event was handled; on timeout, say which are missing."""
    await wait_for(
        lambda: producer.confirmed <= records.handled().keys(),
        DRAIN,
        what,
        watch=consumers,
        interval=0.05,
        detail=lambda: check(producer.confirmed, records.handled()).summary(),
    )


@dataclass
class Killed:
    """What the SIGKILL scenario leaves for its checks."""

    producer: Producer
    start: float
    at_kill: int
    killed: str  # the killed process's record-file tag, ``<name>-<pid>``


async def _sigkill_mid_stream(
    consumer: ConsumerProcess, records: Records, producer_app: App, topic: str, window: int
) -> Killed:
    """Emit N events, start ``consumer`` on the backlog, SIGKILL it with a third handled and
    handlers in flight, restart it and wait until every confirmed event was handled."""
    consumer.start()
    await consumer.ready()  # its subscription (RabbitMQ: its queue) now exists
    await consumer.stop()
    producer = Producer(producer_app, topic)
    start = time.monotonic()
    await producer.emit(N)
    assert not producer.raised, list(producer.raised.items())[:5]
    # Working through a backlog with 10 ms handlers keeps the whole window in flight.
    consumer.start()
    await wait_for(
        _busy(records, N // 3, window // 2),
        DRAIN,
        "a third handled, more in flight",
        watch=[consumer],
    )
    killed = f"{consumer.name}-{consumer.pid}"
    await consumer.kill()
    at_kill = len(records.handled())
    assert at_kill < N, "the stream ended before the kill; nothing was tested"

    consumer.start()
    await _wait_all(records, producer, [consumer], "every event after the restart")
    await consumer.stop()
    return Killed(producer, start, at_kill, killed)


async def test_sigkill_mid_stream_then_restart(
    broker: Broker, topic: str, consumers: MakeConsumer, records: Records, producer_app: App
) -> None:
    """SIGKILL the consumer while handlers run; a restarted one handles everything."""
    window = 16
    consumer = consumers(concurrency=window, delay=0.01)
    run = await _sigkill_mid_stream(consumer, records, producer_app, topic, window)
    report = check(run.producer.confirmed, records.handled())
    bound = duplicate_window(producer_app, window)
    record_result(
        "SIGKILL mid-stream, restart",
        broker.name,
        run.producer.attempted,
        report,
        time.monotonic() - run.start,
        bound=bound,
        note=f"killed after {run.at_kill} handled",
    )
    report.assert_delivered(bound)


def _dedup_redis() -> str:
    """The URL of the Redis the fault brokers use (``REDIS_PORT``), for the dedup store."""
    port = int(os.environ.get("REDIS_PORT") or 6379)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        pytest.skip(f"the dedup store needs Redis on 127.0.0.1:{port}")
    return f"redis://127.0.0.1:{port}/0"


async def test_sigkill_with_dedup_runs_no_recorded_success_again(
    broker: Broker, topic: str, consumers: MakeConsumer, records: Records, producer_app: App
) -> None:
    """The SIGKILL scenario with ``App(dedup=RedisDedup(...))``: after the restart, no event
    whose success the store had recorded is handled again, and nothing is lost. Duplicates
    left are the successes killed before their record (the documented window)."""
    redis_url = _dedup_redis()
    window = 16
    consumer = consumers(concurrency=window, delay=0.01, dedup=redis_url)
    run = await _sigkill_mid_stream(consumer, records, producer_app, topic, window)
    producer, killed, at_kill = run.producer, run.killed, run.at_kill
    report = check(producer.confirmed, records.handled())
    handled = records.by_process("handled")
    recorded_before_kill = records.by_process("recorded").get(killed, Counter())
    handled_after_kill: Counter[int] = Counter()
    for tag, counts in handled.items():
        if tag != killed:
            handled_after_kill.update(counts)
    again = sorted(seq for seq in recorded_before_kill if handled_after_kill[seq])
    record_result(
        "SIGKILL mid-stream, restart, dedup on",
        broker.name,
        producer.attempted,
        report,
        time.monotonic() - run.start,
        bound=window,
        note=(
            f"killed after {at_kill} handled, {len(recorded_before_kill)} successes recorded; "
            f"{len(again)} recorded successes handled again"
        ),
    )
    assert len(recorded_before_kill) >= at_kill - window, "the store recorded no successes"
    assert not report.lost, report.summary()
    assert not report.unexpected, report.summary()
    assert not again, f"recorded successes handled again after the restart: {again[:20]}"
    # Only successes not yet recorded at the kill can run again: at most the in-flight window.
    assert report.duplicates <= window, report.summary()


async def test_sigterm_drains_slow_handlers(
    broker: Broker, topic: str, consumers: MakeConsumer, records: Records, producer_app: App
) -> None:
    """SIGTERM with slow handlers in flight: they finish and are settled, the process exits
    within the shutdown timeout, and a restarted consumer sees no duplicate."""
    window, shutdown = 8, 15.0
    consumer = consumers(concurrency=window, delay=0.2, shutdown_timeout=shutdown).start()
    await consumer.ready()
    producer = Producer(producer_app, topic)
    start = time.monotonic()
    await producer.emit(N)
    assert not producer.raised, list(producer.raised.items())[:5]

    await wait_for(
        _busy(records, 2 * window, window // 2), DRAIN, "slow handlers in flight", watch=[consumer]
    )
    took = await consumer.stop(timeout=shutdown + 20)
    started, handled = records.started(), records.handled()
    unfinished = sorted(started.keys() - handled.keys())
    assert not unfinished, f"in-flight handlers were cut short at SIGTERM: {unfinished}"
    assert took < shutdown, f"graceful stop took {took:.1f}s (shutdown_timeout={shutdown})"

    consumer.start(delay=0.0)
    await _wait_all(records, producer, [consumer], "every event after the restart")
    await consumer.stop()

    report = check(producer.confirmed, records.handled())
    record_result(
        "SIGTERM drains slow handlers",
        broker.name,
        producer.attempted,
        report,
        time.monotonic() - start,
        bound=0,
        note=f"stopped in {took:.1f}s",
    )
    report.assert_delivered(0)


async def test_shutdown_timeout_exceeded_hands_work_back(
    broker: Broker,
    topic: str,
    consumers: MakeConsumer,
    records: Records,
    producer_app: App,
    backend_options: dict[str, Any],
) -> None:
    """Handlers slower than ``shutdown_timeout``: cut short at SIGTERM, not acknowledged, and
    delivered again after a restart."""
    window, shutdown = 8, 1.0
    consumer = consumers(
        concurrency=window, delay=60.0, shutdown_timeout=shutdown, options=backend_options
    ).start()
    await consumer.ready()
    producer = Producer(producer_app, topic)
    start = time.monotonic()
    await producer.emit(N)
    assert not producer.raised, list(producer.raised.items())[:5]

    await wait_for(
        lambda: len(records.started()) >= window,
        DRAIN,
        "slow handlers in flight",
        watch=[consumer],
    )
    took = await consumer.stop(timeout=shutdown + 20)
    cut_short = set(records.started())
    assert not records.handled(), "a 60 s handler finished within a 1 s shutdown timeout?"

    consumer.start(delay=0.0)
    await _wait_all(records, producer, [consumer], "every event after the restart")
    await consumer.stop()

    handled = records.handled()
    report = check(producer.confirmed, handled)
    record_result(
        "shutdown timeout exceeded",
        broker.name,
        producer.attempted,
        report,
        time.monotonic() - start,
        bound=0,
        note=f"{len(cut_short)} cut short, stopped in {took:.1f}s",
    )
    assert cut_short <= handled.keys(), "work cut short at shutdown did not come back"
    report.assert_delivered(0)


async def test_poison_event_is_dead_lettered_and_the_rest_flow(
    broker: Broker,
    topic: str,
    group: str,
    consumers: MakeConsumer,
    records: Records,
    producer_app: App,
) -> None:
    """A handler that always fails: bounded attempts, then a dead letter with failure details;
    every other event is handled."""
    window, retries = 16, 2
    poison = sorted({N // 7, N // 2, N - 3})
    consumer = consumers(concurrency=window, poison=poison, retries=retries).start()
    await consumer.ready()
    producer = Producer(producer_app, topic)
    start = time.monotonic()
    await producer.emit(N)
    assert not producer.raised, list(producer.raised.items())[:5]

    await wait_for(
        _distinct(records, N - len(poison)), DRAIN, "every healthy event", watch=[consumer]
    )
    dead: list = []

    async def all_dead_lettered() -> bool:
        dead[:] = await dead_letters_of(producer_app, topic, group)
        return len(dead) >= len(poison)

    await wait_for(
        all_dead_lettered, 60, f"{len(poison)} dead letters", watch=[consumer], interval=0.2
    )
    await consumer.stop()

    seqs = sorted(json.loads(d.payload)["body"]["seq"] for d in dead)
    assert seqs == poison
    for letter in dead:
        assert letter.reason == "handler", letter.headers
        assert letter.error.startswith("PoisonError: event "), letter.error
        assert letter.attempts == retries + 1, letter.headers
        assert letter.handler and "record" in letter.handler, letter.headers
        assert letter.headers.get("x-dispytch-original-topic") == topic, letter.headers
    attempts = records.started()
    assert {seq: attempts[seq] for seq in poison} == {seq: retries + 1 for seq in poison}

    handled = records.handled()
    assert not set(poison) & handled.keys()
    report = check(set(producer.confirmed) - set(poison), handled)
    record_result(
        "poison event dead-lettered",
        broker.name,
        producer.attempted,
        report,
        time.monotonic() - start,
        bound=0,
        note=f"{len(poison)} poison, {retries + 1} attempts each, all dead-lettered",
    )
    report.assert_delivered(0)


async def _restart(broker: Broker) -> float:
    """Restart the broker, keeping its data; return the seconds it took.

    scripts/brokers.sh runs Redis without persistence (a restart would wipe every stream), so
    Redis is stopped with ``SHUTDOWN SAVE`` (a snapshot, which the new server loads): a Redis
    with persistence being restarted.
    """
    if broker.service != "redis":
        return await brokers_sh("restart", broker.service)
    start = time.monotonic()
    await run("redis-cli", "-h", "127.0.0.1", "-p", str(broker.port), "shutdown", "save")
    await brokers_sh("up", "redis")
    return time.monotonic() - start


async def test_broker_restart_mid_stream(
    broker: Broker, topic: str, consumers: MakeConsumer, records: Records, producer_app: App
) -> None:
    """Restart the broker (data kept) mid-stream: emits during the outage raise or are
    confirmed, never vanish; the same consumer process reconnects and handles every confirmed
    event."""
    window = 16
    consumer = consumers(concurrency=window, delay=0.01).start()
    await consumer.ready()
    producer = Producer(producer_app, topic)
    start = time.monotonic()
    third = N // 3
    await producer.emit(third)
    assert not producer.raised, list(producer.raised.items())[:5]
    await wait_for(_distinct(records, third // 3), DRAIN, "events flowing", watch=[consumer])
    pid = consumer.pid

    restart = asyncio.create_task(_restart(broker))
    outage_raised = 0
    try:
        # Keep emitting while the broker goes down and comes back, in small paced batches.
        while not restart.done():
            before = len(producer.raised)
            await producer.emit(10, batch=10, deadline=120)
            outage_raised += len(producer.raised) - before
            await asyncio.wait({restart}, timeout=0.1)
        restart_took = restart.result()
        outage_emits = producer.attempted - third

        # After the restart: the producer must recover by itself (first emits may still fail).
        async def producer_recovered() -> bool:
            return await producer.emit(10, batch=10, deadline=120) == 10

        recovered = await wait_for(
            producer_recovered, 120, "emits to be confirmed again", interval=0.2
        )
        await producer.emit(max(0, N - producer.attempted))
    finally:
        if not restart.done():
            await asyncio.wait({restart})
        await brokers_sh("up", broker.service)  # leave it running and healthy whatever happened

    confirmed = producer.confirmed
    back = time.monotonic()
    await _wait_all(records, producer, [consumer], "the consumer to reconnect and handle them all")
    caught_up = time.monotonic() - back
    assert consumer.pid == pid and consumer.alive, "the consumer process did not survive"
    await consumer.stop()

    report = check(confirmed, records.handled(), maybe=producer.raised)
    raised = len(producer.raised)
    bound = duplicate_window(producer_app, window)
    delivered_anyway = len(set(producer.raised) & records.handled().keys())
    record_result(
        "broker restart mid-stream",
        broker.name,
        producer.attempted,
        report,
        time.monotonic() - start,
        raised=raised,
        bound=bound,
        note=(
            f"restart {restart_took:.0f}s; {outage_emits} emits during it, {outage_raised} "
            f"raised, {delivered_anyway} of those stored anyway; emits ok again "
            f"{recovered:.1f}s after it, consumer caught up {caught_up:.1f}s later"
        ),
    )
    report.assert_delivered(bound)


@pytest.mark.parametrize("broker", ["kafka"], indirect=True)
async def test_kafka_rebalance_consumer_joins_and_leaves(
    broker: Broker, topic: str, consumers: MakeConsumer, records: Records, producer_app: App
) -> None:
    """A second consumer joins the group mid-stream, takes partitions, then leaves (SIGTERM):
    nothing is lost, duplicates stay within the in-flight window per rebalance."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{broker.port}")
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    finally:
        await admin.close()

    window = 16
    first = consumers("a", concurrency=window, delay=0.005).start()
    await first.ready()
    producer = Producer(producer_app, topic)
    start = time.monotonic()
    stop = asyncio.Event()

    async def paced() -> None:
        # ~500 events/s until the test is done with the rebalances and N were emitted.
        while not (stop.is_set() and producer.attempted >= N):
            await producer.emit(25, batch=25)
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)

    emitting = asyncio.create_task(paced())
    try:
        await wait_for(_distinct(records, N // 4), DRAIN, "events flowing", watch=[first])
        second = consumers("b", concurrency=window, delay=0.005).start()
        await wait_for(
            lambda: len(records.handled("b")) >= 50,
            60,
            "the joining consumer to get partitions",
            watch=[first, second],
        )
        await second.stop()
        after_leave = len(records.handled("a"))
        await wait_for(
            lambda: len(records.handled("a")) >= after_leave + 100,
            60,
            "the first consumer to take the partitions back",
            watch=[first],
        )
    finally:
        stop.set()
        await emitting
    assert not producer.raised, list(producer.raised.items())[:5]
    await _wait_all(records, producer, [first], "every event")
    await first.stop()

    report = check(producer.confirmed, records.handled())
    bound = 2 * duplicate_window(producer_app, window)
    record_result(
        "Kafka rebalance: join, then leave",
        broker.name,
        producer.attempted,
        report,
        time.monotonic() - start,
        bound=bound,
        note=f"4 partitions; b handled {len(records.handled('b'))}",
    )
    report.assert_delivered(bound)


async def test_connections_reset_repeatedly(
    broker: Broker, topic: str, consumers: MakeConsumer, records: Records, producer_app: App
) -> None:
    """Abort the consumer's broker connections (``ss -K``) several times while it works through
    a stream of events: it reconnects by itself each time, without a storm of connection
    attempts, handles every event, and ends with no more tasks or file descriptors than
    before."""
    window, resets = 8, RESETS
    consumer = consumers(concurrency=window, delay=0.01).start()
    await consumer.ready()
    producer = Producer(producer_app, topic)
    start = time.monotonic()
    stop = asyncio.Event()

    async def paced() -> None:
        # ~500 events/s until the resets are done and N were emitted.
        while not (stop.is_set() and producer.attempted >= N):
            await producer.emit(25, batch=25)
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)

    emitting = asyncio.create_task(paced())
    timeline: list[str] = []
    try:
        await wait_for(_distinct(records, 200), DRAIN, "events flowing", watch=[consumer])
        before = await consumer.stats()
        fds_before = consumer.open_fds()
        for i in range(resets):
            old = consumer.connections_to(broker.port)
            assert old, f"the consumer has no connection to port {broker.port}"
            mark = len(records.handled())
            t = time.monotonic()
            await reset_connections(broker.port, old)
            await wait_for(
                lambda old=old: not consumer.connections_to(broker.port) & old,
                5,
                "the reset connections to go (ss -K needs root and CONFIG_INET_DIAG_DESTROY)",
                watch=[consumer],
            )

            def reconnected(old: set[int] = old, mark: int = mark) -> bool:
                # New connections, and events handled through them since the reset.
                now = consumer.connections_to(broker.port)
                return bool(now - old) and len(records.handled()) >= mark + 100

            await wait_for(
                reconnected, 60, f"the consumer to reconnect after reset {i + 1}", watch=[consumer]
            )
            timeline.append(f"{time.monotonic() - t:.1f}")
    finally:
        stop.set()
        await emitting
    await producer.emit(200)  # and some more, all after the last reset
    assert not producer.raised, list(producer.raised.items())[:5]
    await _wait_all(records, producer, [consumer], "every event after the resets")

    # Leaks: what the resets left behind goes away once the consumer is back to normal.
    after: dict[str, int] = {}

    async def settled_down() -> bool:
        after.update(await consumer.stats())
        return after["tasks"] <= before["tasks"] + 2 and consumer.open_fds() <= fds_before + 2

    await wait_for(
        settled_down,
        20,
        "tasks and file descriptors back to their number before the resets",
        watch=[consumer],
        interval=0.5,
        detail=lambda: (
            f"before: {before}, {fds_before} fds; now: {after}, {consumer.open_fds()} fds"
        ),
    )
    fds_after = consumer.open_fds()
    await consumer.stop()

    # Each reset costs each connection one new attempt; a storm would be many per reset.
    connects = after["connects"] - before["connects"]
    connect_bound = resets * (before["connects"] + 2)
    report = check(producer.confirmed, records.handled())
    bound = resets * duplicate_window(producer_app, window)
    record_result(
        "connections reset repeatedly",
        broker.name,
        producer.attempted,
        report,
        time.monotonic() - start,
        bound=bound,
        note=(
            f"{resets} resets, flowing again after {', '.join(timeline)} s; "
            f"{connects} connection attempts (≤ {connect_bound}); tasks {before['tasks']} -> "
            f"{after['tasks']}, fds {fds_before} -> {fds_after}"
        ),
    )
    assert connects <= connect_bound, (
        f"{connects} connection attempts for {resets} resets (the consumer made "
        f"{before['connects']} to start): a reconnection storm{consumer.describe()}"
    )
    report.assert_delivered(bound)


async def test_backlog_with_slow_handler(
    broker: Broker, topic: str, consumers: MakeConsumer, records: Records, producer_app: App
) -> None:
    """A consumer started on a large backlog with a slow handler holds at most ``concurrency``
    events in its handlers, and its memory stays flat while it works through the backlog."""
    window, sample_for, warm_up = 16, 10.0, 2.0
    consumer = consumers(concurrency=window, delay=0.002, fsync=False).start()
    await consumer.ready()  # its subscription exists: the backlog is kept for its group
    await consumer.stop()

    event = event_class(topic)
    t = time.monotonic()
    for first in range(0, BACKLOG, 5000):
        await producer_app.emit_many(
            event(seq=seq) for seq in range(first, min(BACKLOG, first + 5000))
        )
    loaded = time.monotonic() - t

    consumer.start()
    await consumer.ready()
    began = time.monotonic()
    samples: list[tuple[float, int]] = []

    def sampled_enough() -> bool:
        samples.append((time.monotonic() - began, consumer.rss_kb()))
        return samples[-1][0] >= sample_for or len(records.handled()) >= BACKLOG

    await wait_for(sampled_enough, sample_for + 30, "RSS samples", watch=[consumer], interval=0.25)
    stats = await consumer.stats()
    handled = len(records.handled())
    await consumer.stop()

    steady = [rss for at, rss in samples if at >= warm_up] or [samples[-1][1]]
    growth_mb = (max(steady) - steady[0]) / 1024
    record_result(
        "backlog, slow handler",
        broker.name,
        BACKLOG,
        None,
        time.monotonic() - began,
        note=(
            f"loaded in {loaded:.1f}s; {handled} handled in {samples[-1][0]:.0f}s (2 ms "
            f"handler); peak in-flight {stats['peak']} (bound {window}); RSS "
            f"{samples[0][1] // 1024} -> {steady[0] // 1024} MB at {warm_up:.0f}s -> "
            f"{samples[-1][1] // 1024} MB, growth after warm-up {growth_mb:.1f} MB"
        ),
    )
    assert handled > 0, "nothing was handled"
    assert stats["peak"] <= window, f"{stats['peak']} handlers ran at once (concurrency {window})"
    assert stats["peak"] >= window // 2, f"only {stats['peak']} in flight: was it starved?"
    assert growth_mb < 30, f"RSS grew {growth_mb:.1f} MB after warm-up: {samples}"


@pytest.mark.parametrize("broker", ["kafka", "rabbitmq", "nats", "redis_streams"], indirect=True)
async def test_event_that_crashes_the_process_is_dead_lettered(
    broker: Broker,
    topic: str,
    group: str,
    consumers: MakeConsumer,
    records: Records,
    producer_app: App,
) -> None:
    """A handler that ends the process (``os._exit(1)``) for one event: restarted consumers
    keep dying on it until the delivery count passes ``max_deliveries``, then it is
    dead-lettered (reason ``redelivery``) without running the handler, and the rest flow.
    (Kafka keeps no delivery count itself: Dispytch keeps it in the commit metadata.)"""
    window, max_deliveries = 16, 3
    events = min(N, 500)
    crash = events // 2
    consumer = consumers(
        concurrency=window, crash=[crash], crash_delay=0.3, max_deliveries=max_deliveries
    ).start()
    await consumer.ready()
    producer = Producer(producer_app, topic)
    start = time.monotonic()
    await producer.emit(events)
    assert not producer.raised, list(producer.raised.items())[:5]

    crashes: list[int] = []
    dead: list = []

    async def dead_lettered() -> bool:
        if not consumer.alive:
            assert consumer.process is not None
            code = consumer.process.returncode
            assert code == 1, f"consumer exited with {code}, not the crash's 1{consumer.describe()}"
            crashes.append(len(records.handled()))
            assert len(crashes) <= max_deliveries, f"crashed {len(crashes)} times: {crashes}"
            consumer.start()
            return False
        dead[:] = await dead_letters_of(producer_app, topic, group)
        return bool(dead)

    await wait_for(dead_lettered, 120, "the crashing event to be dead-lettered", interval=0.1)
    healthy = producer.confirmed - {crash}
    await wait_for(
        lambda: healthy <= records.handled().keys(),
        DRAIN,
        "every other event",
        watch=[consumer],
        detail=lambda: check(healthy, records.handled()).summary(),
    )
    await consumer.stop()

    assert len(dead) == 1, [d.headers for d in dead]
    letter = dead[0]
    assert json.loads(letter.payload)["body"]["seq"] == crash
    assert letter.reason == "redelivery", letter.headers
    assert letter.attempts == max_deliveries + 1, letter.headers
    assert len(crashes) == max_deliveries, crashes
    assert records.started()[crash] == max_deliveries  # the last delivery never ran the handler

    handled = records.handled()
    report = check(healthy, handled)
    bound = len(crashes) * duplicate_window(producer_app, window)
    record_result(
        "event that crashes the process",
        broker.name,
        producer.attempted,
        report,
        time.monotonic() - start,
        bound=bound,
        note=(
            f"max_deliveries={max_deliveries}: {len(crashes)} crashes, then dead-lettered "
            f"(reason {letter.reason}, attempts {letter.attempts})"
        ),
    )
    report.assert_delivered(bound)


@pytest.mark.parametrize(
    "broker",
    ["nats", "redis_streams"],
    indirect=True,
)
async def test_handler_longer_than_redelivery_timeout(
    broker: Broker, topic: str, consumers: MakeConsumer, records: Records, producer_app: App
) -> None:
    """A live consumer whose handler runs longer than the broker's redelivery timeout
    (``ack_wait`` / ``claim_idle_ms``, 2 s here) keeps its events: none is delivered again
    while its handler runs, with free slots asking the broker for more."""
    events, delay = 4, 5.0
    consumer = consumers(concurrency=8, delay=delay).start()
    await consumer.ready()
    producer = Producer(producer_app, topic)
    await producer.emit(events)
    await wait_for(
        lambda: len(records.handled()) >= events, delay + 30, "the slow handlers", watch=[consumer]
    )
    await consumer.stop()
    started = records.started()
    assert max(started.values()) == 1, f"delivered again while being handled: {started}"
    assert max(records.handled().values()) == 1, records.handled()
