"""The consumer under test, run in its own process: ``python -m dispytch run
tests.faults.consumer_app:build`` (the CLI calls the factory), so a test can SIGKILL it.

Configured by environment variables (set by :class:`tests.faults.harness.ConsumerProcess`):

``DISPYTCH_BROKER_URL``   the broker (read by ``App`` itself)
``FAULT_TOPIC``           topic to consume
``FAULT_GROUP``           consumer group
``FAULT_RECORDS``         directory for the record files
``FAULT_NAME``            names this consumer's record files (several consumers may share a dir)
``FAULT_CONCURRENCY``     the app's ``concurrency`` (the in-flight window)
``FAULT_SHUTDOWN``        the app's ``shutdown_timeout`` in seconds
``FAULT_DELAY``           seconds each handler call sleeps before recording (slow handlers)
``FAULT_POISON``          comma-separated sequence numbers whose handler always raises
``FAULT_RETRIES``         handler retries (extra attempts after the first)
``FAULT_CRASH``           comma-separated sequence numbers whose handler ends the process
                          (``os._exit(1)``) after ``FAULT_CRASH_DELAY`` seconds
``FAULT_MAX_DELIVERIES``  the app's ``max_deliveries``
``FAULT_FSYNC``           ``0``: do not fsync the handled records (throughput tests only)
``FAULT_OPTIONS``         JSON object of backend options (``ack_wait``, ``claim_idle_ms``...)
``FAULT_DEDUP``           a Redis URL: the app runs with ``dedup=RedisDedup(url)``, and each
                          success the store recorded is appended to ``recorded-<name>-<pid>.log``

On SIGUSR1 the process logs one ``fault-stats`` line: asyncio tasks alive, handlers in flight
now and at most so far, and connection attempts (``loop.create_connection`` calls, which every
client library here makes for each TCP connection) since the start.

Every handler call appends its sequence number to ``started-<name>-<pid>.log`` first; a handler
that completes appends it to ``handled-<name>-<pid>.log`` and fsyncs before returning, so a
sequence number in a ``handled`` file was durably processed before the broker could hear of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from typing import Any

from pydantic import BaseModel

from dispytch import App, Event
from dispytch.dedup import DedupStore
from tests.faults.record_file import RecordFile


class PoisonError(Exception):
    """Raised by the handler for the sequence numbers listed in ``FAULT_POISON``."""


class Seq(BaseModel):
    seq: int


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def _env_seqs(name: str) -> set[int]:
    return {int(s) for s in os.environ.get(name, "").split(",") if s.strip()}


class Stats:
    """What the ``fault-stats`` line reports."""

    def __init__(self) -> None:
        self.inflight = 0
        self.peak = 0
        self.connects = 0

    def log(self) -> None:
        logging.getLogger("fault").info(
            "fault-stats tasks=%d inflight=%d peak=%d connects=%d",
            len(asyncio.all_tasks()),
            self.inflight,
            self.peak,
            self.connects,
        )

    def count_connections(self) -> None:
        """Count every ``create_connection`` of this process's event loops."""
        original = asyncio.BaseEventLoop.create_connection

        async def counting(loop: Any, *args: Any, **kwargs: Any) -> Any:
            self.connects += 1
            return await original(loop, *args, **kwargs)

        asyncio.BaseEventLoop.create_connection = counting  # type: ignore[method-assign]


def recording_dedup(url: str, group: str, path: str, seqs: dict[str, int]) -> DedupStore:
    """A RedisDedup that appends the sequence number of each success it recorded to ``path``
    (after Redis confirmed the key), so the test can tell recorded successes apart."""
    from dispytch.redis import RedisDedup

    recorded = RecordFile(path, durable=True)

    class Recording(RedisDedup):
        async def record(self, key: str) -> None:
            await super().record(key)
            seq = seqs.pop(key.rpartition(":")[2], None)
            if seq is not None:
                recorded.add(seq)

    return Recording(url, prefix=f"fault:{group}:", ttl=600)


def build() -> App:
    topic = os.environ["FAULT_TOPIC"]
    records = os.environ["FAULT_RECORDS"]
    tag = f"{os.environ.get('FAULT_NAME', 'c')}-{os.getpid()}"
    delay = _env_float("FAULT_DELAY", 0.0)
    poison = _env_seqs("FAULT_POISON")
    crash = _env_seqs("FAULT_CRASH")
    crash_delay = _env_float("FAULT_CRASH_DELAY", 0.0)
    durable = os.environ.get("FAULT_FSYNC", "1") != "0"
    started = RecordFile(os.path.join(records, f"started-{tag}.log"), durable=False)
    handled = RecordFile(os.path.join(records, f"handled-{tag}.log"), durable=durable)
    stats = Stats()
    stats.count_connections()
    seqs: dict[str, int] = {}  # event id -> sequence number, for the recording dedup store
    dedup_url = os.environ.get("FAULT_DEDUP")
    dedup = (
        recording_dedup(
            dedup_url,
            os.environ["FAULT_GROUP"],
            os.path.join(records, f"recorded-{tag}.log"),
            seqs,
        )
        if dedup_url
        else None
    )

    app = App(
        group=os.environ["FAULT_GROUP"],
        dedup=dedup,
        concurrency=int(os.environ.get("FAULT_CONCURRENCY") or 16),
        shutdown_timeout=_env_float("FAULT_SHUTDOWN", 10.0),
        max_deliveries=int(os.environ.get("FAULT_MAX_DELIVERIES") or 10),
        **json.loads(os.environ.get("FAULT_OPTIONS") or "{}"),
    )

    @app.on_startup
    def report_on_sigusr1() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, stats.log)

    @app.handler(
        topic=topic,
        event="fault_event",
        retries=int(os.environ.get("FAULT_RETRIES") or 0),
        retry_interval=0.01,
    )
    async def record(event: Event[Seq]) -> None:
        seq = event.body.seq
        if dedup is not None:
            seqs[event.id] = seq
        started.add(seq)
        stats.inflight += 1
        stats.peak = max(stats.peak, stats.inflight)
        try:
            if seq in crash:
                # Let the handlers running beside it finish first: only this event is to blame.
                await asyncio.sleep(crash_delay)
                os._exit(1)
            if seq in poison:
                raise PoisonError(f"event {seq} is poison")
            if delay:
                await asyncio.sleep(delay)
            handled.add(seq)
        finally:
            stats.inflight -= 1

    return app
