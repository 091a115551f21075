"""``dispytch run`` as a real subprocess: it stops within ``shutdown_timeout`` plus the grace even
when a handler ignores cancellation, exits non-zero, and never acknowledges the unfinished
message; it exits non-zero when a dead letter can be stored nowhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.examples.test_examples import _wait_for_lines
from tests.helpers import require_broker

#: Memory-backend pieces both services use: a consumer that prints each settle, and a startup
#: hook that puts one event on topic "t".
MEMORY_BASE = """
import asyncio, contextlib, json
from dispytch import App, Event
from dispytch.memory import MemoryBackend, MemoryConsumer
from dispytch.retry import RetryPolicy

class Loud(MemoryConsumer):
    async def ack(self, message):
        print("SETTLE ack", flush=True)
        await super().ack(message)

    async def nack(self, message):
        print("SETTLE nack", flush=True)
        await super().nack(message)

def backend_with(consumer_class, name):
    class Backend(MemoryBackend):
        def consumer(self, group, *, prefetch, max_buffer_bytes=None):
            return consumer_class(self.broker, group)
    return Backend(f"memory://{name}")

def publish_one(app):
    envelope = {"id": "1", "type": "e", "body": {}, "timestamp": 1}
    app.on_startup(lambda: app.backend.broker.publish("t", json.dumps(envelope).encode()))
"""

#: A handler that ignores cancellation.
STUBBORN_SERVICE = (
    MEMORY_BASE
    + """
app = App(backend=backend_with(Loud, "cli-stop"), shutdown_timeout=1, shutdown_grace=1)
publish_one(app)

@app.handler(topic="t", event="e")
async def stubborn(event: Event):
    print("HANDLING", flush=True)
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
"""
)

#: Neither the dead-letter destination nor the fallback can store anything.
NOWHERE_SERVICE = (
    MEMORY_BASE
    + """
class Broken(Loud):
    async def dead_letter(self, message, failure):
        raise PermissionError("dead-letter topic not writable")

    async def dead_letter_fallback(self, message, failure):
        raise PermissionError("fallback not writable either")

app = App(backend=backend_with(Broken, "cli-dlq"),
          dead_letter_retry=RetryPolicy.build(retries=1, retry_interval=0.01))
publish_one(app)

@app.handler(topic="t", event="e")
async def reject(event: Event):
    raise ValueError("declined")
"""
)


def start(tmp_path: Path, source: str) -> subprocess.Popen[str]:
    (tmp_path / "svc.py").write_text(textwrap.dedent(source))
    return subprocess.Popen(
        [sys.executable, "-m", "dispytch", "run", "svc:app"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str], signals: int, budget: float) -> tuple[int, float, str, str]:
    """Send SIGTERM ``signals`` times; return the exit code, the seconds it took, the output."""
    began = time.monotonic()
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
    try:
        code = proc.wait(timeout=budget + 30)  # generous, so a slow exit is measured, not killed
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - began
    out, err = proc.communicate()
    return code, took, out, err


@pytest.mark.parametrize(("signals", "expected"), [(1, 1), (2, 130)])
def test_a_handler_ignoring_cancellation_cannot_keep_the_process_alive(
    tmp_path: Path, signals: int, expected: int
) -> None:
    proc = start(tmp_path, STUBBORN_SERVICE)
    _wait_for_lines(proc, "HANDLING", 1, timeout=60)
    # shutdown_timeout 1 s + grace 1 s (+ 1 s more for the loop's leftovers) + slack
    code, took, out, err = stop(proc, signals, budget=1 + 1 + 1)
    assert code == expected, err
    assert took < 1 + 1 + 1 + 4, f"took {took:.1f}s\n{err}"
    assert "SETTLE ack" not in out.splitlines()  # the unfinished message was never acknowledged
    assert "ignored cancellation" in err or "still running after being cancelled" in err


def test_the_unfinished_message_stays_pending_on_a_durable_broker(tmp_path: Path) -> None:
    require_broker("redis_streams", 6379)
    import redis

    topic = f"cli_stop_{uuid.uuid4().hex[:8]}"
    group = f"g_{topic}"
    source = f"""
        import asyncio, contextlib
        from dispytch import App, Event, EventBase

        app = App("redis+streams://127.0.0.1:6379/0", group="{group}",
                  shutdown_timeout=1, shutdown_grace=1)

        class Ping(EventBase):
            __topic__ = "{topic}"
            __event_type__ = "ping"

        @app.handler(topic="{topic}", event="ping")
        async def stubborn(event: Event):
            print("HANDLING", flush=True)
            while True:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(3600)

        @app.on_startup
        async def publish():
            await app.emit(Ping())
        """
    client = redis.Redis(host="127.0.0.1", port=6379)
    proc = start(tmp_path, source)
    try:
        _wait_for_lines(proc, "HANDLING", 1, timeout=60)
        code, took, _, err = stop(proc, 1, budget=3)
        assert code == 1, err
        assert took < 1 + 1 + 1 + 4, f"took {took:.1f}s\n{err}"
        pending = client.xpending(topic, group)
        assert pending["pending"] == 1  # delivered, never XACKed: the next consumer gets it
    finally:
        client.delete(topic, f"{topic}.dlq")
        client.close()


def test_a_dead_letter_stored_nowhere_stops_the_process_non_zero(tmp_path: Path) -> None:
    proc = start(tmp_path, NOWHERE_SERVICE)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    assert code == 1, err
    assert "SETTLE ack" not in out.splitlines()
    assert "SETTLE nack" in out.splitlines()  # handed back when the listener stopped
    assert "DeadLetterError: could not dead-letter a message from t" in err
    assert "Traceback" in err  # the first failure's traceback, once
    assert err.count("Traceback") == 1
