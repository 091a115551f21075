"""What every variant shares: the event, its bytes, the work per event, the meter, results."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel

from dispytch import EventBase
from dispytch.serialization.json import JSONSerializer

RESULT_PREFIX = "BENCH-RESULT "
_SERIALIZER = JSONSerializer()
EVENT_TYPE = "user_registered"


class User(BaseModel):
    id: int
    email: str
    name: str


class Body(BaseModel):
    """The event body every variant validates."""

    user: User
    seq: int
    key: str


class Envelope(BaseModel):
    """The whole wire envelope, for frameworks that validate the message as one model."""

    id: str
    type: str
    body: Body
    timestamp: int


def event_class(topic: str, config: BaseModel | None = None) -> type[EventBase]:
    """A Dispytch event class publishing to ``topic`` (classes are per topic)."""
    namespace: dict[str, Any] = {
        "__topic__": topic,
        "__event_type__": EVENT_TYPE,
        "__annotations__": {"user": User, "seq": int, "key": str},
    }
    if config is not None:
        namespace["__backend_config__"] = config
    return type("UserRegistered", (EventBase,), namespace)


def body(seq: int, keys: int = 1000) -> dict[str, Any]:
    return {
        "user": {"id": 100_000 + seq % 997, "email": "ada@example.com", "name": "Ada"},
        "seq": seq,
        "key": f"k{seq % keys:04d}",
    }


def payload(seq: int, keys: int = 1000) -> bytes:
    """The exact bytes Dispytch's JSON serializer writes for event ``seq`` (~207 bytes)."""
    envelope = {
        "id": str(uuid.uuid4()),
        "type": EVENT_TYPE,
        "body": body(seq, keys),
        "timestamp": 1_760_000_000_000 + seq,
    }
    return _SERIALIZER.serialize(envelope)


def payloads(n: int, keys: int = 1000) -> list[bytes]:
    return [payload(i, keys) for i in range(n)]


def work(data: bytes) -> Body:
    """What a raw loop does per event: decode JSON, check the type, validate the body."""
    envelope = json.loads(data)
    if envelope["type"] != EVENT_TYPE:
        raise ValueError(envelope["type"])
    return Body.model_validate(envelope["body"])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Meter:
    """Counts handled events; times the first to the ``expected``-th, wall clock and CPU.

    Timing from the first event (not from start) keeps connection set-up and consumer-group
    joins out of the rate, alike for every variant.
    """

    expected: int
    count: int = 0
    wall0: float = 0.0
    cpu0: float = 0.0
    wall1: float = 0.0
    cpu1: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    last_seen: float = 0.0

    def tick(self) -> None:
        self.count += 1
        if self.count == 1:
            self.wall0 = time.perf_counter()
            self.cpu0 = time.process_time()
        if self.count == self.expected:
            self.wall1 = time.perf_counter()
            self.cpu1 = time.process_time()
            self.done.set()

    async def wait(self, idle_timeout: float = 10.0, total_timeout: float = 600.0) -> None:
        """Wait until all arrived, or nothing arrived for ``idle_timeout`` seconds (lost ones)."""
        deadline = time.monotonic() + total_timeout
        seen = -1
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self.done.wait(), idle_timeout)
            except TimeoutError:
                if self.count == seen:
                    break
                seen = self.count
        if not self.done.is_set():
            self.wall1 = time.perf_counter()
            self.cpu1 = time.process_time()

    def result(self, **extra: Any) -> dict[str, Any]:
        n = max(self.count - 1, 1)
        wall = max(self.wall1 - self.wall0, 1e-9)
        return {
            "events": self.count,
            "lost": self.expected - self.count,
            "rate": n / wall,
            "cpu_us": (self.cpu1 - self.cpu0) / n * 1e6,
            "seconds": wall,
            **extra,
        }


async def drive(
    meter: Meter, loop: Coroutine[Any, Any, None], close: Callable[[], Awaitable[Any]]
) -> dict[str, Any]:
    """Run a consume ``loop`` until ``meter`` has counted every event, then close the client."""
    task = asyncio.create_task(loop)
    try:
        await meter.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await close()
    return meter.result()


def timed_publish_result(n: int, wall: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {"events": n, "rate": n / wall, "cpu_us": cpu / n * 1e6, "seconds": wall, **extra}


class Stopwatch:
    """Wall clock and process CPU of a block: ``with Stopwatch() as w: ...; w.wall, w.cpu``."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Stopwatch:
        self.wall = self.cpu = 0.0
        self._w = time.perf_counter()
        self._c = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c

    def add(self, other: Stopwatch) -> None:
        """Count ``other``'s times in too (a measurement made in turns)."""
        self.wall += other.wall
        self.cpu += other.cpu


def envelopes(n: int) -> list[dict[str, Any]]:
    """``n`` envelopes as dicts, for the variants that serialize the message themselves."""
    return [
        {"id": str(uuid.uuid4()), "type": EVENT_TYPE, "body": body(i), "timestamp": 0}
        for i in range(n)
    ]


def publish_sizes(spec: Spec) -> tuple[int, int]:
    """``(sequential emits, batch size)`` of a publish measurement."""
    sequential = int(spec.options.get("sequential", max(spec.events // 10, 1)))
    return sequential, int(spec.options.get("batch", 1000))


TURN_PREFIX = "BENCH-TURN"


class Turns:
    """Lockstep with the other variants' workers (``bench/run.py --interleave``): before each
    timed slice the worker says ``BENCH-TURN`` on stdout and waits for a line on stdin, so the
    orchestrator runs one slice at a time, the variants' slices alternating. Round trips then
    meet the same broker and machine state whichever variant makes them."""

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self.taken = 0

    async def take(self) -> None:
        if self._reader is None:
            self._reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(self._reader)
            await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, sys.stdin)
        sys.stdout.write(TURN_PREFIX + "\n")
        sys.stdout.flush()
        if not await self._reader.readline():
            raise SystemExit("the orchestrator went away")
        self.taken += 1


async def timed_publish(
    spec: Spec,
    one: Callable[[Any], Awaitable[Any]],
    many: Callable[[Sequence[Any]], Awaitable[Any]],
    items: Callable[[int], Sequence[Any]] = envelopes,
) -> dict[str, Any]:
    """The publish measurement: ``one(item)`` awaited for each sequential emit (each must
    return only once confirmed), then ``many(batch)`` for every ``--batch`` of ``--events``.

    With ``options["interleave"] = k`` the sequential emits run in turns of ``k``, and the
    batched ones in one more turn (see :class:`Turns`); the times are the sums of the turns.
    """
    seq_n, batch = publish_sizes(spec)
    slice_size = int(spec.options.get("interleave") or 0) or seq_n
    turns = Turns() if spec.options.get("interleave") else None
    sequential = items(seq_n)
    # Building the inputs allocates a lot: a collection it triggers would land in the timed
    # window of whichever variant happens to cross the threshold. Collect before timing.
    gc.collect()
    seq = Stopwatch()
    for start in range(0, seq_n, slice_size):
        if turns is not None:
            await turns.take()
        with Stopwatch() as turn:
            for item in sequential[start : start + slice_size]:
                await one(item)
        seq.add(turn)
    batched = items(spec.events)
    gc.collect()
    if turns is not None:
        await turns.take()
    with Stopwatch() as many_watch:
        for i in range(0, len(batched), batch):
            await many(batched[i : i + batch])
    result = publish_results(seq_n, seq, spec.events, many_watch, batch)
    result["turns"] = turns.taken if turns is not None else 0
    return result


def publish_results(
    seq_n: int, seq: Stopwatch, batch_n: int, many: Stopwatch, batch: int
) -> dict[str, Any]:
    """The sequential and batched publish numbers of one publish measurement."""
    return {
        "sequential": timed_publish_result(seq_n, seq.wall, seq.cpu),
        "batched": timed_publish_result(batch_n, many.wall, many.cpu, batch=batch),
    }


class OrderedWork:
    """The I/O-bound handler's work: check per-key ``seq`` order, await, count."""

    def __init__(self, meter: Meter, sleep: float) -> None:
        self.meter = meter
        self.sleep = sleep
        self.last: dict[str, int] = {}
        self.violations = 0

    async def handle(self, key: str, seq: int) -> None:
        if self.last.get(key, -1) >= seq:
            self.violations += 1
        self.last[key] = seq
        await asyncio.sleep(self.sleep)
        self.meter.tick()

    def result(self) -> dict[str, Any]:
        return self.meter.result(order_violations=self.violations, keys=len(self.last))


def rss_kib() -> int:
    """Current resident set size of this process in KiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def max_rss_kib() -> int:
    """Peak RSS of this process in KiB: ``VmHWM``, the high-water mark of its own memory.

    Not ``ru_maxrss``: Linux carries a process's ``ru_maxrss`` over ``execve``, so a worker
    spawned by an orchestrator that once held a 200,000-event backlog would report the
    orchestrator's peak. Falls back to ``ru_maxrss`` where ``/proc`` is missing.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds in the background."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.perf_counter()

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.samples.append((time.perf_counter() - self._t0, rss_kib()))
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.samples.append((time.perf_counter() - self._t0, rss_kib()))


def emit_result(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


@dataclass
class Spec:
    """One measurement, as passed from the orchestrator to a worker process (JSON)."""

    scenario: str  # consume | publish | io | memory
    backend: str
    variant: str  # raw | dispytch | faststream
    events: int
    target: str = ""  # topic / queue / channel prepared for this run
    group: str = ""
    url: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    profile: str = ""  # write cProfile stats here

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str) -> Spec:
        return cls(**json.loads(text))


Runner = Callable[[Spec], Any]
