"""Failover on replicated brokers: the cluster profile (``scripts/cluster/cluster.sh``).

A producer emits numbered events at a steady pace (every emit confirmed or raised) while a
consumer process (``dispytch run``) handles them; a node is crashed (SIGKILL) or frozen
(SIGSTOP) and later brought back. Checked for every scenario: every confirmed emit is handled
at least once, duplicates stay within the in-flight window per fault, and the same consumer
process handles events emitted after the node came back (it is not stuck).

Scenarios: the leader of the test's data killed and restarted (Kafka: the partition leader,
RabbitMQ: the quorum queue's leader, NATS: the stream leader, Redis: the master, which
Sentinel replaces by the replica); a follower killed and restarted; two successive leaders
killed (each restarted before the next); the leader frozen for longer than the cluster's
failure timeouts (a network partition of one node), then resumed.

Runs when ``DISPYTCH_CLUSTER`` lists backends (``kafka,rabbitmq,nats,redis_streams``) and the
clusters are up (``bash scripts/cluster/cluster.sh up``). The leader scenario runs for every
listed backend; ``DISPYTCH_CLUSTER_FULL=1`` adds the others. ``DISPYTCH_FAULT_RESULTS`` collects
the numbers (``python scripts/fault_report.py FILE`` renders them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispytch import App
from tests.faults.cluster import SERVICES, Cluster, Names, cluster_url, full_set, listed
from tests.faults.harness import (
    ConsumerProcess,
    Producer,
    Records,
    check,
    duplicate_window,
    record_result,
    wait_for,
)

#: Seconds a frozen node stays frozen: longer than Kafka's broker session (4 s), Sentinel's
#: down-after (2 s), JetStream's Raft election timeouts and RabbitMQ's net_ticktime (10 s).
PAUSE = 20.0
WINDOW = 16
SCENARIOS = ["leader", "follower", "two_leaders", "partition"]
#: The scenario that always runs (CI); the rest with DISPYTCH_CLUSTER_FULL=1.
SUBSET = {"leader"}

pytestmark = [pytest.mark.fault, pytest.mark.cluster, pytest.mark.timeout(600)]


@pytest.fixture(params=list(SERVICES))
async def cluster(request: pytest.FixtureRequest) -> Cluster:
    name = request.param
    if name not in listed():
        pytest.skip(f"{name} not in DISPYTCH_CLUSTER")
    spec = Cluster(name, cluster_url(name))
    if not await spec.healthy():
        pytest.fail(
            f"{name} is listed in DISPYTCH_CLUSTER but its cluster is not healthy; run: "
            f"bash scripts/cluster/cluster.sh up {spec.service}"
        )
    return spec


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def names(uid: str) -> Names:
    """Topic, group and (NATS) stream of the test."""
    return Names(topic=f"cluster_{uid}", group=f"cluster_{uid}", stream=f"cluster_{uid}")


@pytest.fixture
def options(cluster: Cluster, names: Names) -> dict[str, Any]:
    """Backend options of every app of the test: short redelivery timeouts (what a dead
    connection held comes back within seconds) and, on NATS, a stream per test."""
    if cluster.name == "nats":
        return {
            "ack_wait": 2.0,
            "stream": names.stream,
            "dead_letter_stream": f"{names.stream}_dlq",
        }
    if cluster.name == "redis_streams":
        return {"claim_idle_ms": 2000}
    if cluster.name == "kafka" and os.environ.get("DISPYTCH_CLUSTER_KAFKA_REQUEST_TIMEOUT_MS"):
        return {"request_timeout_ms": int(os.environ["DISPYTCH_CLUSTER_KAFKA_REQUEST_TIMEOUT_MS"])}
    return {}


@pytest.fixture
async def producer_app(
    cluster: Cluster, uid: str, options: dict[str, Any], names: Names
) -> AsyncIterator[App]:
    app = App(cluster.url, group=f"cluster_producer_{uid}", **options)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
        await cluster.delete(names)


@pytest.fixture
def consumer(
    cluster: Cluster, names: Names, tmp_path: Path, options: dict[str, Any]
) -> Iterator[ConsumerProcess]:
    process = ConsumerProcess(
        cluster.url,
        names.topic,
        names.group,
        tmp_path / "records",
        concurrency=WINDOW,
        delay=0.002,
        options=options,
    )
    yield process
    process.cleanup()


class TimedProducer(Producer):
    """A :class:`Producer` that also notes when each emit raised."""

    def __init__(self, app: App, topic: str) -> None:
        super().__init__(app, topic)
        self.raised_at: dict[int, float] = {}

    async def _one(self, seq: int) -> bool:
        ok = await super()._one(seq)
        if not ok:
            self.raised_at[seq] = time.monotonic()
        return ok

    def outage(self, first: int, end: int, since: float) -> str:
        """How emits ``first`` to ``end - 1`` fared: how many raised, the last how long after
        ``since``."""
        raised = [t for seq, t in self.raised_at.items() if first <= seq < end]
        if not raised:
            return "no emit raised"
        return f"{len(raised)} emits raised, the last {max(raised) - since:.1f}s after"

    def errors(self) -> str:
        """The most frequent errors of the emits that raised."""
        kinds = Counter(text[:90] for text in self.raised.values())
        return " | ".join(f"{n}x {text}" for text, n in kinds.most_common(3))


class Paced:
    """Emits 20 events every 50 ms in the background until stopped."""

    def __init__(self, producer: TimedProducer) -> None:
        self.producer = producer
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.producer.emit(20, batch=20, deadline=120)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.05)

    def check(self) -> None:
        if self._task.done():
            self._task.result()  # raises what stopped it

    async def stop(self) -> None:
        self._stop.set()
        await self._task


async def _handled_after(
    records: Records,
    producer: TimedProducer,
    paced: Paced,
    consumer: ConsumerProcess,
    mark: int,
    what: str,
    timeout: float = 120.0,
) -> float:
    """Wait until an event emitted (and confirmed) from ``mark`` on is handled; return when
    (``time.monotonic()``)."""

    def handled() -> bool:
        paced.check()
        done = records.handled().keys()
        return any(seq >= mark and seq in producer.confirmed for seq in done)

    await wait_for(handled, timeout, what, watch=[consumer], interval=0.05)
    return time.monotonic()


async def _partition(
    cluster: Cluster,
    victim: int,
    records: Records,
    producer: TimedProducer,
    paced: Paced,
    consumer: ConsumerProcess,
) -> tuple[float, str, int]:
    """Freeze ``victim`` for PAUSE seconds. Returns when events were handled again (seconds
    after the freeze), what happened (handled during the freeze, or only after it ended:
    clients connected to the frozen node notice only through their own timeouts), and the
    first emit made during the freeze."""
    t0 = time.monotonic()
    await cluster.pause(victim)
    mark = producer.attempted
    try:
        at = await _handled_after(
            records, producer, paced, consumer, mark, "events handled while frozen", PAUSE
        )
        how = "(while frozen) "
    except AssertionError:  # not within PAUSE: the freeze ends, then it must recover
        at = 0.0
        how = "(only once resumed) "
    finally:
        frozen = PAUSE - (time.monotonic() - t0)
        if frozen > 0:
            await asyncio.sleep(frozen)
        await cluster.resume(victim)
    if not at:
        at = await _handled_after(
            records, producer, paced, consumer, mark, "events handled after the freeze"
        )
    return at - t0, how, mark


def failover_window(cluster: Cluster, app: App) -> int:
    """Duplicates one fault may cause: the unsettled in-flight window plus settlements not yet
    at the broker (:func:`duplicate_window`); on RabbitMQ and NATS also up to a window of
    settlements sent to the old leader that it had not replicated when it died (a quorum
    queue's or a JetStream consumer's Raft log), which the new leader delivers again."""
    extra = WINDOW if cluster.name in ("rabbitmq", "nats") else 0
    return duplicate_window(app, WINDOW) + extra


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(
            s,
            marks=[]
            if s in SUBSET or full_set()
            else [pytest.mark.skip(reason="set DISPYTCH_CLUSTER_FULL=1 for this scenario")],
        )
        for s in SCENARIOS
    ],
)
async def test_failover(
    cluster: Cluster,
    scenario: str,
    names: Names,
    consumer: ConsumerProcess,
    producer_app: App,
) -> None:
    records = Records(consumer.records)
    consumer.start()
    await consumer.ready()  # its subscription, queue or durable exists (and its topic)
    producer = TimedProducer(producer_app, names.topic)
    began = time.monotonic()
    paced = Paced(producer)
    notes: list[str] = []
    faults = 0

    def flowing() -> bool:
        paced.check()
        return len(records.handled()) >= 200

    try:
        await wait_for(flowing, 120, "events flowing", watch=[consumer])
        rounds = 2 if scenario == "two_leaders" else 1
        for _ in range(rounds):
            leader = await cluster.leader(names)
            if scenario == "follower":
                _, followers = await cluster.replicas(names)
                assert followers, "no follower in sync to kill"
                victim, role = followers[0], "follower"
            else:
                victim, role = leader, "leader"
            t0 = time.monotonic()
            elected = ""
            if scenario == "partition":
                recovered, how, mark = await _partition(
                    cluster, victim, records, producer, paced, consumer
                )
                restart = 0.0
            else:
                await cluster.kill(victim)
                mark = producer.attempted  # emits from here on start after the node is gone
                recovered = (
                    await _handled_after(
                        records, producer, paced, consumer, mark, f"events handled without {role}"
                    )
                    - t0
                )
                how = ""
                if role == "leader":
                    changed, after = await cluster.new_leader(victim, names)
                    elected = f"n{changed} elected after {after:.1f}s, "
                restart = await cluster.start(victim)
            faults += 1
            back, t1 = producer.attempted, time.monotonic()
            emits = producer.outage(mark, back, t0)
            resumed = (
                await _handled_after(
                    records, producer, paced, consumer, back, "events handled after it came back"
                )
                - t1
            )
            resync = await cluster.wait_whole(names)
            new_leader = await cluster.leader(names)
            notes.append(
                f"{role} n{victim} {'paused' if scenario == 'partition' else 'killed'}: "
                f"{elected}handling again after {recovered:.1f}s {how}({emits}); "
                + (f"restarted in {restart:.1f}s, " if restart else f"resumed after {PAUSE:.0f}s, ")
                + f"in sync {resync:.1f}s later, leader now n{new_leader} "
                f"(new events handled {resumed:.1f}s after)"
            )
    finally:
        await paced.stop()
    assert consumer.alive, "the consumer process did not survive"
    await wait_for(
        lambda: producer.confirmed <= records.handled().keys(),
        120,
        "every confirmed event",
        watch=[consumer],
        interval=0.1,
        detail=lambda: check(producer.confirmed, records.handled()).summary(),
    )
    await consumer.stop()

    report = check(producer.confirmed, records.handled(), maybe=producer.raised)
    bound = faults * failover_window(cluster, producer_app)
    raised = len(producer.raised)
    stored_anyway = len(set(producer.raised) & records.handled().keys())
    record_result(
        f"cluster: {scenario.replace('_', ' ')}",
        cluster.name,
        producer.attempted,
        report,
        time.monotonic() - began,
        raised=raised,
        bound=bound,
        note="; ".join(notes)
        + f"; {raised} emits raised in all ({stored_anyway} of them stored anyway)",
    )
    if producer.raised:
        print(f"errors of the emits that raised: {producer.errors()}")
    report.assert_delivered(bound)
