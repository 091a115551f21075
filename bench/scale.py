"""Scale-out: events/s of 1, 2 and 4 consumer processes in one group, rebalance pauses when one
joins or leaves, and correctness (nothing lost, per-key order).

    python bench/scale.py                                   # every cluster backend, defaults
    python bench/scale.py --backends kafka,redis_streams --events 60000 --work-us 200
    python bench/scale.py --target single                   # the default-profile brokers

Against the cluster profile (``bash scripts/cluster/cluster.sh up``) by default. Per backend:

* **throughput**: a backlog of ``--events`` keyed events (``--keys`` keys, each key's sequence
  numbers in order) is loaded, then 1, 2 and 4 consumer processes drain it, as separate
  ``dispytch run`` processes and as ``dispytch run --workers N``. The rate is taken from the
  moment every process handled its first event (all joined, partitions assigned) to the last
  event. Kafka: a 6-partition topic (``--kafka-partitions``; keys spread over the partitions);
  RabbitMQ: the group's quorum queue; NATS: one JetStream durable; Redis: one Streams consumer
  group.
* **rebalance** (``--rebalance``): a producer emits ~``--rate`` events/s; consumer A runs, B
  joins, later B leaves (SIGTERM). Reported: how long B took from "listening" to its first event,
  and the longest pause in the group's handling around the join and around the leave.
* **correctness**, each run: every event handled at least once (lost = never handled),
  duplicates, and per-key order over the whole group (events of one key handled by the group
  in sequence order, by handle time on the machine-wide monotonic clock).

The handler burns ``--work-us`` µs of CPU per event (0 by default: the framework and client
cost alone). Prints one table per backend; never asserts anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from dispytch import App, Event, EventBase  # noqa: E402

CLUSTER_URLS = {
    "kafka": "kafka://127.0.0.1:29091,127.0.0.1:29092,127.0.0.1:29093",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:29671,127.0.0.1:29672,127.0.0.1:29673/",
    "nats": "nats://127.0.0.1:29421,127.0.0.1:29422,127.0.0.1:29423",
    "redis_streams": "redis+streams://127.0.0.1:29391,127.0.0.1:29392,127.0.0.1:29393/0"
    "?sentinel=dispytch",
}
SINGLE_URLS = {
    "kafka": "kafka://127.0.0.1:9092",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "nats": "nats://127.0.0.1:4222",
    "redis_streams": "redis+streams://127.0.0.1:6379/0",
}
KAFKA_PARTITIONS = 6


class Keyed(BaseModel):
    """A backend config carrying only the ordering key (what the emitter reads)."""

    partition_key: str


def keyed(backend: str, key: str) -> BaseModel:
    if backend == "kafka":
        from dispytch.kafka import KafkaEventConfig

        return KafkaEventConfig(partition_key=key)
    if backend == "rabbitmq":
        from dispytch.rabbitmq import RabbitMQEventConfig

        return RabbitMQEventConfig(partition_key=key)
    if backend == "nats":
        from dispytch.nats import NATSEventConfig

        return NATSEventConfig(partition_key=key)
    return Keyed(partition_key=key)


def event_class(topic: str) -> type[EventBase]:
    class ScaleEvent(EventBase):
        __topic__ = topic
        __event_type__ = "scale_event"
        key: str
        seq: int
        pad: str = ""

    return ScaleEvent


# -- one run's setting -------------------------------------------------------------------------


@dataclass
class Run:
    backend: str
    url: str
    work_us: float
    concurrency: int
    partitions: int = KAFKA_PARTITIONS
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def topic(self) -> str:
        return f"scale_{self.uid}"

    @property
    def group(self) -> str:
        return f"scale_{self.uid}"

    def options(self) -> dict[str, Any]:
        if self.backend == "nats":
            return {"stream": f"scale_{self.uid}", "dead_letter_stream": f"scale_{self.uid}_dlq"}
        if self.backend == "kafka":
            return {"topic_partitions": self.partitions}
        return {}

    def env(self, out: Path) -> dict[str, str]:
        import json

        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "DISPYTCH_BROKER_URL": self.url,
            "SCALE_TOPIC": self.topic,
            "SCALE_GROUP": self.group,
            "SCALE_OUT": str(out),
            "SCALE_WORK_US": str(self.work_us),
            "SCALE_CONCURRENCY": str(self.concurrency),
            "SCALE_OPTIONS": json.dumps(self.options()),
        }


class Consumers:
    """Consumer processes of one run: separate ``dispytch run`` processes or one supervisor
    with ``--workers``."""

    def __init__(self, run: Run, out: Path) -> None:
        self.run = run
        self.out = out
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, workers: int = 1) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = self.out / f"proc-{n}.out"
        cmd = [sys.executable, "-m", "dispytch", "run", "bench.scale_app:build"]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        with log.open("wb") as f:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.run.env(self.out),
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def listening(self) -> int:
        """How many "listening as group" lines the processes logged."""
        return sum(p.read_text(errors="replace").count("listening as group") for p in self.logs)

    def stop(self, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
        for p in [proc] if proc is not None else self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in [proc] if proc is not None else self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def records(out: Path) -> Iterator[tuple[int, float, str, int]]:
    """Every handled event: (file index, time, key, seq)."""
    for i, path in enumerate(sorted(out.glob("handled-*.log"))):
        with path.open() as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    yield i, float(parts[0]), parts[1], int(parts[2])


def count_handled(out: Path) -> int:
    total = 0
    for path in out.glob("handled-*.log"):
        with path.open("rb") as f:
            total += f.read().count(b"\n")
    return total


# -- broker set-up -------------------------------------------------------------------------------


async def prepare(run: Run) -> None:
    """Create the topic / queue / durable / group before anything is emitted."""
    if run.backend == "kafka":
        from dispytch.kafka.replication import TopicSettings, create_topics

        servers = run.url.split("://", 1)[1].split(",")
        await create_topics(servers, {}, [run.topic], TopicSettings(partitions=run.partitions))
        return
    # The others: a consumer app of the group that starts and stops declares everything.
    app = App(run.url, group=run.group, **run.options())

    @app.handler(topic=run.topic, event="scale_event")
    async def never(event: Event[Any]) -> None:  # pragma: no cover - stopped before any event
        raise RuntimeError("the preparing app must not handle events")

    await app.start()
    await app.stop()


async def load(run: Run, events: int, keys: int, pad: int) -> float:
    """Emit the backlog: ``events`` events round-robin over ``keys`` keys, each key's events
    numbered in order. Returns the events/s of the load."""
    cls = event_class(run.topic)
    configs = [keyed(run.backend, f"k{k}") for k in range(keys)]
    padding = "x" * pad
    app = App(run.url, group=f"{run.group}_producer", **run.options())
    start = time.monotonic()
    async with app:
        batch = 2000
        for first in range(0, events, batch):
            await app.emit_many(
                cls(key=f"k{s % keys}", seq=s, pad=padding, __backend_config__=configs[s % keys])
                for s in range(first, min(events, first + batch))
            )
    return events / (time.monotonic() - start)


async def cleanup(run: Run) -> None:
    with contextlib.suppress(Exception):
        if run.backend == "kafka":
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=run.url.split("://", 1)[1].split(","))
            await admin.start()
            try:
                await admin.delete_topics([run.topic, f"{run.topic}.dlq"])
            finally:
                await admin.close()
        elif run.backend == "nats":
            from dispytch.nats import NATSBackend

            backend = NATSBackend(run.url, **run.options())
            await backend.connect()
            try:
                assert backend.jetstream is not None
                await backend.jetstream.delete_stream(run.options()["stream"])
                await backend.jetstream.delete_stream(run.options()["dead_letter_stream"])
            finally:
                await backend.close()
        elif run.backend == "redis_streams":
            from dispytch.redis.streams import RedisStreamsBackend

            backend = RedisStreamsBackend(run.url)
            try:
                await backend.client.delete(run.topic)
            finally:
                await backend.close()
        else:
            from dispytch.rabbitmq.failover import connect

            connection = await connect(run.url, "rabbitmq", {})
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(run.group)


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Drain:
    label: str
    processes: int
    rate: float
    lost: int
    duplicates: int
    order_violations: int
    seconds: float
    handled_by: list[int]


def check(
    out: Path, events: int
) -> tuple[int, int, int, dict[int, int], list[float], dict[int, float]]:
    """Lost, duplicates, per-key order violations over the group, events per file, handle
    times, first handle time per file."""
    seen: dict[int, int] = defaultdict(int)
    per_file: dict[int, int] = defaultdict(int)
    first: dict[int, float] = {}
    by_key: dict[str, list[tuple[float, int]]] = defaultdict(list)
    times: list[float] = []
    for index, t, key, seq in records(out):
        seen[seq] += 1
        per_file[index] += 1
        first[index] = min(first.get(index, t), t)
        by_key[key].append((t, seq))
        times.append(t)
    lost = sum(1 for s in range(events) if s not in seen)
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    violations = 0
    for handled in by_key.values():
        handled.sort()
        highest = -1
        for _, seq in handled:
            if seq < highest:
                violations += 1
            highest = max(highest, seq)
    return lost, duplicates, violations, per_file, times, first


async def drain(run: Run, processes: int, mode: str, events: int, keys: int, pad: int) -> Drain:
    out = Path(tempfile.mkdtemp(prefix="dispytch-scale-"))
    await prepare(run)
    await load(run, events, keys, pad)
    consumers = Consumers(run, out)
    try:
        if mode == "workers" and processes > 1:
            consumers.start(workers=processes)
        else:
            for _ in range(processes):
                consumers.start()
        deadline = time.monotonic() + 120 + events / 500
        while count_handled(out) < events:
            if time.monotonic() > deadline:
                break
            if any(p.poll() is not None for p in consumers.procs):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # late duplicates, last flushes
    finally:
        consumers.stop()
    lost, duplicates, violations, per_file, times, first = check(out, events)
    # from the moment every process handled one event to the last event
    start = max(first.values()) if len(first) == processes else min(times)
    end = max(times)
    steady = sum(1 for t in times if t >= start)
    rate = steady / (end - start) if end > start else float("nan")
    label = "1 process" if processes == 1 else f"{processes} {mode}"
    shutil.rmtree(out, ignore_errors=True)
    await cleanup(run)
    return Drain(
        label,
        processes,
        rate,
        lost,
        duplicates,
        violations,
        end - min(times),
        [per_file[i] for i in sorted(per_file)],
    )


@dataclass
class Rebalance:
    join_first_event: float
    join_pause: float
    leave_pause: float
    lost: int
    duplicates: int
    order_violations: int
    events: int


async def rebalance(run: Run, rate: int, keys: int) -> Rebalance:
    """A steady producer; consumer A; B joins; B leaves."""
    out = Path(tempfile.mkdtemp(prefix="dispytch-rebalance-"))
    await prepare(run)
    cls = event_class(run.topic)
    configs = [keyed(run.backend, f"k{k}") for k in range(keys)]
    consumers = Consumers(run, out)
    app = App(run.url, group=f"{run.group}_producer", **run.options())
    emitted = 0
    stop = asyncio.Event()

    async def produce() -> None:
        nonlocal emitted
        tick = 0.05
        per_tick = max(1, int(rate * tick))
        while not stop.is_set():
            began = time.monotonic()
            await app.emit_many(
                cls(key=f"k{s % keys}", seq=s, __backend_config__=configs[s % keys])
                for s in range(emitted, emitted + per_tick)
            )
            emitted += per_tick
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - began)))

    async with app:
        a = consumers.start()
        await poll(lambda: consumers.listening() >= 1, 120)
        producing = asyncio.create_task(produce())
        await asyncio.sleep(4)
        b = consumers.start()
        join = time.monotonic()
        await poll(lambda: consumers.listening() >= 2, 120)
        b_listening = time.monotonic()
        await asyncio.sleep(8)
        consumers.stop(b)
        leave = time.monotonic()
        await asyncio.sleep(8)
        stop.set()
        await producing
    await poll(lambda: count_handled(out) >= emitted, 60)
    await asyncio.sleep(1)
    consumers.stop(a)
    lost, duplicates, violations, _, times, _ = check(out, emitted)
    b_times = [t for i, t, _, _ in records(out) if i == _file_of(out, b.pid)]
    times.sort()

    def longest_pause(start: float, end: float) -> float:
        window = [t for t in times if start <= t <= end]
        if len(window) < 2:
            return end - start
        gaps = [b - a for a, b in zip([start, *window], [*window, end], strict=True)]
        return max(gaps)

    shutil.rmtree(out, ignore_errors=True)
    await cleanup(run)
    return Rebalance(
        join_first_event=(min(b_times) - b_listening) if b_times else float("nan"),
        join_pause=longest_pause(join, join + 8),
        leave_pause=longest_pause(leave, leave + 8),
        lost=lost,
        duplicates=duplicates,
        order_violations=violations,
        events=emitted,
    )


async def poll(predicate: Callable[[], bool], timeout: float) -> bool:
    """Wait until ``predicate()`` holds (``True``) or ``timeout`` seconds passed (``False``)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)


def _file_of(out: Path, pid: int) -> int:
    names = sorted(p.name for p in out.glob("handled-*.log"))
    return names.index(f"handled-{pid}.log") if f"handled-{pid}.log" in names else -1


# -- main ----------------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="kafka,redis_streams,rabbitmq,nats")
    parser.add_argument("--target", choices=["cluster", "single"], default="cluster")
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--keys", type=int, default=64)
    parser.add_argument("--pad", type=int, default=100, help="bytes of padding per event body")
    parser.add_argument("--work-us", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--modes", default="separate,workers")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--kafka-partitions", type=int, default=KAFKA_PARTITIONS)
    parser.add_argument("--rebalance", action="store_true", help="also measure join/leave")
    parser.add_argument("--rate", type=int, default=1000, help="events/s in --rebalance")
    args = parser.parse_args()
    urls = CLUSTER_URLS if args.target == "cluster" else SINGLE_URLS
    counts = [int(n) for n in args.processes.split(",")]
    modes = args.modes.split(",")
    print(
        f"# scale-out: {args.events} events, {args.keys} keys, handler work {args.work_us:g} µs, "
        f"concurrency {args.concurrency}, {args.target} brokers, {os.cpu_count()} CPUs"
    )
    for backend in args.backends.split(","):
        url = urls[backend]
        rows: dict[str, list[Drain]] = defaultdict(list)
        for _ in range(args.repeats):
            for n in counts:
                for mode in modes if n > 1 else ["separate"]:
                    run = Run(backend, url, args.work_us, args.concurrency, args.kafka_partitions)
                    result = await drain(run, n, mode, args.events, args.keys, args.pad)
                    rows[result.label].append(result)
                    print(
                        f"  {backend} {result.label}: {result.rate:,.0f} events/s "
                        f"[load average {os.getloadavg()[0]:.1f}] "
                        f"(lost {result.lost}, dup {result.duplicates}, order "
                        f"{result.order_violations}, per process {result.handled_by})",
                        flush=True,
                    )
        base = statistics.median(r.rate for r in rows["1 process"])
        print(f"\n## {backend} ({url.split('://', 1)[0]}, {args.target})\n")
        print(
            "| consumers | events/s | x 1 process | lost | duplicates | per-key order "
            "violations | events per process |"
        )
        print("|---|---:|---:|---:|---:|---:|---|")
        for label, results in rows.items():
            rate = statistics.median(r.rate for r in results)
            last = results[-1]
            print(
                f"| {label} | {rate:,.0f} | {rate / base:.2f}x | "
                f"{sum(r.lost for r in results)} | {sum(r.duplicates for r in results)} | "
                f"{sum(r.order_violations for r in results)} | {last.handled_by} |"
            )
        if args.rebalance:
            rb = await rebalance(Run(backend, url, args.work_us, args.concurrency), args.rate, 64)
            print(
                f"\nrebalance at {args.rate} events/s: B handled its first event "
                f"{rb.join_first_event:.2f}s after it listened; longest pause in the group's "
                f"handling: {rb.join_pause:.2f}s around the join, {rb.leave_pause:.2f}s around "
                f"the leave; {rb.events} events, lost {rb.lost}, duplicates {rb.duplicates}, "
                f"per-key order violations {rb.order_violations}"
            )
        print(flush=True)


if __name__ == "__main__":
    asyncio.run(main())
