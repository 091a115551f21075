"""Fault-test harness: a producer that remembers every confirmed emit, a consumer in its own
process that records every handled sequence number durably, and a checker for lost and
duplicated sequence numbers.

Nothing here sleeps and hopes: :func:`wait_for` polls a condition until a deadline and fails
with the consumers' log tails when it is not met.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispytch import App, EventBase

REPO = Path(__file__).resolve().parents[2]
CONSUMER_TARGET = "tests.faults.consumer_app:build"
EVENT_TYPE = "fault_event"


def fault_events() -> int:
    """Events per scenario: ``DISPYTCH_FAULT_EVENTS`` (default 2000)."""
    return int(os.environ.get("DISPYTCH_FAULT_EVENTS") or 2000)


def fault_backlog() -> int:
    """Events in the backlog scenario: ``DISPYTCH_FAULT_BACKLOG`` (default 20000)."""
    return int(os.environ.get("DISPYTCH_FAULT_BACKLOG") or 20_000)


def event_class(topic: str) -> type[EventBase]:
    """The event the producer emits: its sequence number travels in the body."""

    class FaultEvent(EventBase):
        __topic__ = topic
        __event_type__ = EVENT_TYPE
        seq: int

    return FaultEvent


# -- waiting -----------------------------------------------------------------------------------


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str,
    *,
    watch: Sequence[ConsumerProcess] = (),
    interval: float = 0.02,
    detail: Callable[[], str] | None = None,
) -> float:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds or when a watched consumer
    exits (with ``detail()`` and the consumers' log tails). Returns the seconds waited."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        for consumer in watch:
            consumer.check_alive(what)
        if time.monotonic() > deadline:
            more = f"\n{detail()}" if detail is not None else ""
            tails = "".join(c.describe() for c in watch)
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{more}{tails}")
        await asyncio.sleep(interval)


# -- records -----------------------------------------------------------------------------------


class Records:
    """Reads the record files the consumer processes append to (incrementally)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[Path, tuple[int, Counter[int]]] = {}

    def _scan(self, prefix: str) -> dict[Path, Counter[int]]:
        out: dict[Path, Counter[int]] = {}
        for path in sorted(self.directory.glob(f"{prefix}-*.log")):
            offset, counts = self._files.get(path, (0, Counter()))
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # only whole lines: a writer may be mid-line
            if end:
                counts.update(int(line) for line in chunk[:end].split())
            self._files[path] = (offset + end, counts)
            out[path] = counts
        return out

    def _total(self, prefix: str, name: str | None) -> Counter[int]:
        total: Counter[int] = Counter()
        for path, counts in self._scan(prefix).items():
            if name is None or path.name.startswith(f"{prefix}-{name}-"):
                total.update(counts)
        return total

    def handled(self, name: str | None = None) -> Counter[int]:
        """How often each sequence number was durably handled (by consumer ``name``, or any)."""
        return self._total("handled", name)

    def started(self, name: str | None = None) -> Counter[int]:
        """How often a handler was called for each sequence number (attempts included)."""
        return self._total("started", name)

    def by_process(self, prefix: str) -> dict[str, Counter[int]]:
        """``prefix`` records (``handled``, ``recorded``...) per writing process, by file name
        (``<name>-<pid>``)."""
        return {
            path.name[len(prefix) + 1 : -len(".log")]: counts
            for path, counts in self._scan(prefix).items()
        }


@dataclass
class Report:
    """Lost and duplicated sequence numbers."""

    confirmed: int
    handled: int  # distinct sequence numbers handled
    lost: list[int]  # confirmed, never handled
    duplicates: int  # handler completions beyond the first, summed over sequence numbers
    duplicated: list[int]
    unexpected: list[int]  # handled, but never emitted (or emitted with an error)

    def summary(self) -> str:
        return (
            f"confirmed={self.confirmed} handled={self.handled} lost={len(self.lost)} "
            f"{self.lost[:20]} duplicates={self.duplicates} {self.duplicated[:20]} "
            f"unexpected={self.unexpected[:20]}"
        )

    def assert_delivered(self, duplicate_bound: int) -> None:
        """Nothing lost, nothing unexpected, duplicates within the in-flight window."""
        assert not self.lost, self.summary()
        assert not self.unexpected, self.summary()
        assert self.duplicates <= duplicate_bound, self.summary()


def check(confirmed: Iterable[int], handled: Counter[int], *, maybe: Iterable[int] = ()) -> Report:
    """Compare what the broker confirmed with what the consumers handled.

    ``maybe`` are sequence numbers whose emit raised: the broker may or may not have stored them,
    so handling them is neither a loss nor unexpected.
    """
    want = set(confirmed)
    duplicated = sorted(seq for seq, n in handled.items() if n > 1)
    return Report(
        confirmed=len(want),
        handled=len(handled),
        lost=sorted(want - handled.keys()),
        duplicates=sum(handled[seq] - 1 for seq in duplicated),
        duplicated=duplicated,
        unexpected=sorted(handled.keys() - want - set(maybe)),
    )


def duplicate_window(app: App, concurrency: int) -> int:
    """How many handled events one fault may replay: the unsettled in-flight window
    (``concurrency``), plus settled events whose settlement is batched and may not have reached
    the broker: on Kafka records not yet committed (at most ``commit_every`` records or
    ``commit_interval`` seconds behind), on Redis Streams acks not yet sent (``ack_batch``)."""
    backend = app.backend
    batched = int(getattr(backend, "commit_every", 0))
    options = getattr(backend, "consumer_options", None)
    if isinstance(options, dict):
        batched += int(options.get("ack_batch", 0))
    return concurrency + batched


async def dead_letters_of(app: App, topic: str, group: str) -> list[Any]:
    """The dead letters of ``topic`` written by the consumers of ``group``, read by ``app``
    (RabbitMQ keeps one dead-letter queue per group, so its backend asks for the group)."""
    read = app.backend.dead_letters
    if "group" in inspect.signature(read).parameters:
        return list(await read(topic, group=group))  # type: ignore[call-arg]
    return list(await read(topic))


# -- producer ----------------------------------------------------------------------------------


class Producer:
    """Emits numbered events through ``app`` and remembers, per event, confirmed or raised."""

    def __init__(self, app: App, topic: str) -> None:
        self.app = app
        self.event = event_class(topic)
        self.confirmed: set[int] = set()
        self.raised: dict[int, str] = {}
        self.next_seq = 0

    @property
    def attempted(self) -> int:
        return self.next_seq

    async def _one(self, seq: int) -> bool:
        try:
            await self.app.emit(self.event(seq=seq))
        except Exception as exc:
            self.raised[seq] = f"{type(exc).__name__}: {exc}"
            return False
        self.confirmed.add(seq)
        return True

    async def emit(self, count: int, *, batch: int = 200, deadline: float = 90.0) -> int:
        """Emit the next ``count`` sequence numbers, ``batch`` concurrently; return how many were
        confirmed. Fails if an emit neither returns nor raises within ``deadline`` seconds."""
        ok = 0
        end = self.next_seq + count
        while self.next_seq < end:
            seqs = range(self.next_seq, min(end, self.next_seq + batch))
            self.next_seq = seqs.stop
            try:
                async with asyncio.timeout(deadline):
                    results = await asyncio.gather(*(self._one(s) for s in seqs))
            except TimeoutError:
                raise AssertionError(
                    f"emits of {seqs.start}..{seqs.stop - 1} neither returned nor raised within "
                    f"{deadline}s: an emit must be confirmed or fail loudly"
                ) from None
            ok += sum(results)
        return ok


# -- consumer process --------------------------------------------------------------------------


@dataclass
class ConsumerProcess:
    """``python -m dispytch run tests.faults.consumer_app:build`` (or another ``target``) in
    its own process."""

    url: str
    topic: str
    group: str
    records: Path
    name: str = "c"
    concurrency: int = 16
    shutdown_timeout: float = 10.0
    delay: float = 0.0
    poison: Sequence[int] = ()
    retries: int = 0
    crash: Sequence[int] = ()
    crash_delay: float = 0.0
    max_deliveries: int = 10
    fsync: bool = True
    #: a Redis URL: the app gets ``dedup=RedisDedup(url)`` (see ``consumer_app``)
    dedup: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: the app ``dispytch run`` runs (it reads the ``FAULT_*`` variables)
    target: str = CONSUMER_TARGET
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    runs: int = 0

    @property
    def log_path(self) -> Path:
        return self.records / f"{self.name}-{self.runs}.out"

    def start(self, **changes: Any) -> ConsumerProcess:
        """Start a (new) process; ``changes`` override settings (e.g. ``delay=0``)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"consumer {self.name} is still running")
        for key, value in changes.items():
            setattr(self, key, value)
        self.runs += 1
        env = {
            **os.environ,
            "DISPYTCH_BROKER_URL": self.url,
            "FAULT_TOPIC": self.topic,
            "FAULT_GROUP": self.group,
            "FAULT_RECORDS": str(self.records),
            "FAULT_NAME": self.name,
            "FAULT_CONCURRENCY": str(self.concurrency),
            "FAULT_SHUTDOWN": str(self.shutdown_timeout),
            "FAULT_DELAY": str(self.delay),
            "FAULT_POISON": ",".join(map(str, self.poison)),
            "FAULT_RETRIES": str(self.retries),
            "FAULT_CRASH": ",".join(map(str, self.crash)),
            "FAULT_CRASH_DELAY": str(self.crash_delay),
            "FAULT_MAX_DELIVERIES": str(self.max_deliveries),
            "FAULT_FSYNC": "1" if self.fsync else "0",
            "FAULT_DEDUP": self.dedup or "",
            "FAULT_OPTIONS": json.dumps(self.options),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dispytch", "run", self.target, "--log-level", "INFO"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self, lines: int = 30) -> str:
        code = None if self.process is None else self.process.poll()
        tail = "\n    ".join(self.log().splitlines()[-lines:])
        head = f"\n--- consumer {self.name} run {self.runs} (exit code {code}), log tail:"
        return f"{head}\n    {tail}"

    def check_alive(self, what: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"consumer {self.name} exited with {self.process.returncode} while waiting for "
                f"{what}{self.describe()}"
            )

    async def ready(self, timeout: float = 60.0) -> None:
        """Wait until the app logged that it listens (its subscription exists)."""
        await wait_for(
            lambda: "listening as group" in self.log(),
            timeout,
            f"consumer {self.name} to start listening",
            watch=[self],
        )

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit; return its exit code (``-9`` after SIGKILL)."""
        assert self.process is not None
        process = self.process
        await wait_for(lambda: process.poll() is not None, timeout, f"consumer {self.name} to exit")
        return process.returncode

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        code = await self.wait_exit(10)
        assert code == -signal.SIGKILL, code

    async def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM, wait for a clean exit (code 0); return how long it took."""
        start = time.monotonic()
        self.signal(signal.SIGTERM)
        code = await self.wait_exit(timeout)
        took = time.monotonic() - start
        assert code == 0, f"consumer exited with {code} after SIGTERM{self.describe()}"
        return took

    async def stats(self, timeout: float = 10.0) -> dict[str, int]:
        """Ask the process for a ``fault-stats`` line (SIGUSR1) and return its numbers:
        ``tasks``, ``inflight``, ``peak``, ``connects``."""
        before = len(_STATS.findall(self.log()))
        self.signal(signal.SIGUSR1)
        found: list[tuple[str, ...]] = []

        def answered() -> bool:
            found[:] = _STATS.findall(self.log())
            return len(found) > before

        await wait_for(answered, timeout, f"consumer {self.name} to report its stats", watch=[self])
        return dict(
            zip(("tasks", "inflight", "peak", "connects"), map(int, found[-1]), strict=True)
        )

    def open_fds(self) -> int:
        """File descriptors the process holds now."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kb(self) -> int:
        """Resident memory of the process now (``VmRSS``), in KiB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError(f"no VmRSS in /proc/{self.pid}/status")

    def connections_to(self, port: int) -> set[int]:
        """Local ports of the process's established TCP connections to ``127.0.0.1:port``."""
        inodes = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                link = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
        ports = set()
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
                # 0100007F:port is 127.0.0.1 in /proc/net/tcp's byte order; 01 = ESTABLISHED.
                if inode in inodes and state == "01" and remote == f"0100007F:{port:04X}":
                    ports.add(int(local.split(":")[1], 16))
        return ports

    def cleanup(self) -> None:
        """Kill the process if a failed test left it running."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


_STATS = re.compile(r"fault-stats tasks=(\d+) inflight=(\d+) peak=(\d+) connects=(\d+)")


# -- brokers -----------------------------------------------------------------------------------


async def run(*argv: str, timeout: float = 60.0) -> str:
    """Run a command; fail with its output unless it exits 0. Returns its output."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{' '.join(argv)} did not finish in {timeout}s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{text}")
    return text


async def reset_connections(port: int, local_ports: Iterable[int]) -> None:
    """Abort the TCP connections ``127.0.0.1:<local> -> 127.0.0.1:port`` with ``ss -K`` (the
    kernel destroys the socket and sends a RST; needs root and CONFIG_INET_DIAG_DESTROY)."""
    for local in local_ports:
        await run(
            "ss", "-K", "dst", "127.0.0.1", "dport", "=", f":{port}", "sport", "=", f":{local}"
        )


async def brokers_sh(*args: str, timeout: float = 300.0) -> float:
    """Run ``bash scripts/brokers.sh ARGS``; fail with its output unless it succeeds. Returns the
    seconds it took. ``BROKERS_RUN_DIR``, ``KAFKA_PORT`` etc. pass through from the environment."""
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(REPO / "scripts" / "brokers.sh"),
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"brokers.sh {' '.join(args)} did not finish in {timeout}s") from None
    if proc.returncode != 0:
        raise AssertionError(
            f"brokers.sh {' '.join(args)} failed ({proc.returncode}):\n"
            + out.decode(errors="replace")
        )
    return time.monotonic() - start


# -- results -----------------------------------------------------------------------------------


def record_result(
    scenario: str,
    backend: str,
    events: int,
    report: Report | None,
    duration: float,
    *,
    raised: int = 0,
    bound: int | None = None,
    note: str = "",
) -> None:
    """Append the scenario's numbers to ``DISPYTCH_FAULT_RESULTS`` (JSON lines), if set;
    ``python scripts/fault_report.py FILE`` renders them as the RELIABILITY.md table. Without a
    ``report`` (the scenario measures something else) lost and duplicates are left empty."""
    row = {
        "scenario": scenario,
        "backend": backend,
        "events": events,
        "confirmed": events if report is None else report.confirmed,
        "raised": raised,
        "lost": None if report is None else len(report.lost),
        "duplicates": None if report is None else report.duplicates,
        "bound": bound,
        "duration_s": round(duration, 1),
        "note": note,
    }
    print(json.dumps(row))
    path = os.environ.get("DISPYTCH_FAULT_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
