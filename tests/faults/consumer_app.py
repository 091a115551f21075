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

Every handler call appends its sequence number to ``started-<name>-<pid>.log`` first; a handler
that completes appends it to ``handled-<name>-<pid>.log`` and fsyncs before returning, so a
sequence number in a ``handled`` file was durably processed before the broker could hear of it.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from dispytch import App, Event


class PoisonError(Exception):
    """Raised by the handler for the sequence numbers listed in ``FAULT_POISON``."""


class Seq(BaseModel):
    seq: int


class RecordFile:
    """Append-only file of sequence numbers, one per line; one ``write`` per line."""

    def __init__(self, path: str, durable: bool) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._durable = durable

    def add(self, seq: int) -> None:
        os.write(self._fd, b"%d\n" % seq)
        if self._durable:
            os.fsync(self._fd)


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def build() -> App:
    topic = os.environ["FAULT_TOPIC"]
    records = os.environ["FAULT_RECORDS"]
    tag = f"{os.environ.get('FAULT_NAME', 'c')}-{os.getpid()}"
    delay = _env_float("FAULT_DELAY", 0.0)
    poison = {int(s) for s in os.environ.get("FAULT_POISON", "").split(",") if s.strip()}
    started = RecordFile(os.path.join(records, f"started-{tag}.log"), durable=False)
    handled = RecordFile(os.path.join(records, f"handled-{tag}.log"), durable=True)

    app = App(
        group=os.environ["FAULT_GROUP"],
        concurrency=int(os.environ.get("FAULT_CONCURRENCY") or 16),
        shutdown_timeout=_env_float("FAULT_SHUTDOWN", 10.0),
    )

    @app.handler(
        topic=topic,
        event="fault_event",
        retries=int(os.environ.get("FAULT_RETRIES") or 0),
        retry_interval=0.01,
    )
    async def record(event: Event[Seq]) -> None:
        seq = event.body.seq
        started.add(seq)
        if seq in poison:
            raise PoisonError(f"event {seq} is poison")
        if delay:
            await asyncio.sleep(delay)
        handled.add(seq)

    return app
