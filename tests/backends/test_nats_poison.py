"""Poison input on NATS JetStream and core NATS, published with nats-py or a raw socket (not
Dispytch): key headers that are not base64, subjects and header blocks nats-py cannot decode,
forged status lines, subjects too long for a dead letter, messages at ``max_payload``, a
connection closed for good, a stalled connection, read-ahead bounded in bytes.

Each case is followed by a good event: it must be handled, the bad one dead-lettered (or counted
as skipped), the connection alive, and after a restart the next events handled too.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATSClient
from nats.js import JetStreamContext

from dispytch import App, Event, EventBase
from dispytch.emitter.producer import ProducerTimeout
from dispytch.errors import EmitError, InvalidTopicError
from dispytch.listener.consumer import Failure, Message
from dispytch.nats import NATSBackend, NATSConsumer
from dispytch.nats.core import NATSCoreBackend, NATSCoreConsumer
from dispytch.routing import TopicPattern
from tests.backends.nats_streams import delete_streams
from tests.backends.proxy import FaultyProxy
from tests.backends.slow_reader import BIG, read_slowly
from tests.helpers import eventually, require_broker, wait_until
from tests.nats_raw import hpub, raw_publish

SERVER = "nats://127.0.0.1:4222"
MODES = ["nats", "nats_core"]

pytestmark = pytest.mark.timeout(90)


def envelope(n: int | str) -> bytes:
    return b'{"id":"%s","type":"e","body":{"n":"%s"},"timestamp":1}' % (
        str(n).encode(),
        str(n).encode(),
    )


@dataclass
class Setup:
    """One test's names, its admin connection and how to build its apps (JetStream or core)."""

    mode: str
    nc: NATSClient
    js: JetStreamContext
    uid: str

    @property
    def stream(self) -> str:
        return f"p_{self.uid}"

    @property
    def dlq(self) -> str:
        return f"p_{self.uid}_dlq"

    @property
    def prefix(self) -> str:
        return f"p_{self.uid}_t"

    def url(self, port: int = 4222) -> str:
        scheme = "nats" if self.mode == "nats" else "nats+core"
        return f"{scheme}://127.0.0.1:{port}"

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"dead_letter_stream": self.dlq}
        if self.mode == "nats":
            options.update(stream=self.stream, subjects=[f"{self.prefix}.>"], ack_wait=5)
        return options

    def app(self, got: list[str], port: int = 4222, **extra: Any) -> App:
        app = App(self.url(port), group=f"g_{self.uid}", **self.options(), **extra)

        @app.handler(topic=f"{self.prefix}.{{k}}", event="e")
        async def handle(event: Event[dict]) -> None:
            got.append(event.body["n"])

        return app

    def backend(self) -> NATSBackend | NATSCoreBackend:
        if self.mode == "nats":
            return NATSBackend(SERVER, **self.options())
        return NATSCoreBackend(self.url(), **self.options())


@pytest.fixture(params=MODES)
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    require_broker(request.param, 4222)
    nc = await nats.connect(SERVER)
    state = Setup(request.param, nc, nc.jetstream(), uuid.uuid4().hex[:10])
    yield state
    await nc.close()
    await delete_streams(SERVER, state.stream, state.dlq)


async def _soon(condition: Callable[[], bool]) -> bool:
    try:
        await wait_until(condition, timeout=1.0)
    except AssertionError:
        return False
    return True


async def _dead(setup: Setup, topic: str, count: int) -> list[Any]:
    backend = setup.backend()
    got: list[Any] = []

    async def enough() -> bool:
        got[:] = await backend.dead_letters(topic)
        return len(got) >= count

    await eventually(enough, f"{count} dead letter(s) of {topic}", timeout=20)
    return got


# -- item 4: a key header that is not base64; undecodable subjects and header blocks -------------


async def test_a_key_header_that_is_not_base64_is_dead_lettered_not_a_crash(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[str] = []
    app = setup.app(got)
    await app.start()
    topic = f"{setup.prefix}.a"
    await setup.nc.publish(topic, envelope("bad"), headers={"x-dispytch-key-b64": "!!!notb64"})
    await setup.nc.publish(f"{setup.prefix}.b", envelope(1), headers={"trace": "t-1"})
    await wait_until(lambda: got == ["1"], what="the good event")
    [dead] = await _dead(setup, topic, 1)
    assert dead.payload == envelope("bad") and dead.reason == "decode"
    assert dead.headers["x-dispytch-undecodable"] == "key"
    assert dead.headers["x-dispytch-undecodable-key"] == "!!!notb64"
    assert any(
        "dead-lettered" in r.getMessage() and "not base64" in r.getMessage() for r in caplog.records
    )
    await app.stop()

    # A restart handles new events; JetStream does not deliver the bad one again (it was acked).
    app = setup.app(got)
    await app.start()
    if setup.mode == "nats":
        await setup.nc.publish(f"{setup.prefix}.b", envelope(2))
    else:  # the server may still count the stopped member of the queue group for a moment

        async def handled() -> bool:
            await setup.nc.publish(f"{setup.prefix}.b", envelope(2))
            return await _soon(lambda: "2" in got)

        await eventually(handled, "an event after the restart")
    await wait_until(lambda: got[:2] == ["1", "2"], what="the event after the restart")
    assert len(await setup.backend().dead_letters(topic)) == 1
    await app.stop()


@pytest.mark.private_access
async def test_subjects_and_header_blocks_nats_py_cannot_decode_are_dead_lettered(
    setup: Setup,
) -> None:
    # nats-py decodes subjects as strict UTF-8 and parses status lines outside of any error
    # handling: either killed its reader (a connection that looks up and hears nothing).
    got: list[str] = []
    app = setup.app(got)
    await app.start()
    bad_subject = f"{setup.prefix}.".encode() + b"\xff\xfe"
    await raw_publish(
        [
            hpub(bad_subject, b"NATS/1.0\r\ntrace: t-1\r\n\r\n", envelope("subject")),
            hpub(f"{setup.prefix}.h".encode(), b"NATS/1.0 100 \xff\xfe\r\n\r\n", envelope("hdr")),
            hpub(f"{setup.prefix}.s".encode(), b"NATS/1.0 503\r\n\r\n", envelope("status")),
        ]
    )
    await setup.nc.publish(f"{setup.prefix}.ok", envelope(1))
    # Core NATS has no stored messages: there a status line is only a header named Status.
    handled = ["1"] if setup.mode == "nats" else ["status", "1"]
    await wait_until(lambda: got == handled, what="the good event")

    [by_subject] = await _dead(setup, f"{setup.prefix}.\\xff\\xfe", 1)
    assert by_subject.headers["x-dispytch-undecodable"] == "topic"
    assert base64.b64decode(by_subject.headers["x-dispytch-original-topic-b64"]) == bad_subject
    assert by_subject.headers["trace"] == "t-1" and by_subject.payload == envelope("subject")
    [by_header] = await _dead(setup, f"{setup.prefix}.h", 1)
    assert by_header.headers["x-dispytch-undecodable"] == "headers"
    block = base64.b64decode(by_header.headers["x-dispytch-undecodable-headers-b64"])
    assert block.startswith(b"NATS/1.0 100")
    if setup.mode == "nats":  # a status line JetStream delivers is forged: never a status
        [by_status] = await _dead(setup, f"{setup.prefix}.s", 1)
        assert by_status.payload == envelope("status")
    await app.stop()


# -- item 5: subjects too long for a dead letter; a connection closed for good ------------------


async def test_a_message_on_a_very_long_subject_is_dead_lettered_and_the_connection_lives(
    setup: Setup,
) -> None:
    got: list[str] = []
    app = setup.app(got)
    await app.start()
    topic = f"{setup.prefix}." + "x" * (4050 - len(setup.prefix))
    await setup.nc.publish(topic, b"not json")  # the dead letter's subject would be too long
    await setup.nc.publish(f"{setup.prefix}.ok", envelope(1))
    await wait_until(lambda: got == ["1"], what="the good event")
    [dead] = await _dead(setup, topic, 1)
    assert dead.payload == b"not json" and dead.reason == "decode"
    assert dead.headers["x-dispytch-original-topic"] == topic
    connection = app.backend.connection  # type: ignore[attr-defined]
    assert connection.is_connected and connection.stats["reconnects"] == 0
    await setup.nc.publish(f"{setup.prefix}.ok", envelope(2))
    await wait_until(lambda: got == ["1", "2"], what="an event after it")
    await app.stop()


async def test_an_emit_the_server_would_close_the_connection_for_fails_fast(
    setup: Setup,
) -> None:
    app = setup.app([])
    await app.start()

    class Long(EventBase):
        __topic__ = f"{setup.prefix}." + "y" * 3900
        __event_type__ = "e"

    class Big(EventBase):
        __topic__ = f"{setup.prefix}.big"
        __event_type__ = "e"
        blob: str

    with pytest.raises(InvalidTopicError, match="3840 bytes"):
        await app.emit(Long())
    connection = app.backend.connection  # type: ignore[attr-defined]
    with pytest.raises(EmitError, match="max_payload"):  # fits alone, not with its headers
        await app.backend.producer().send(
            f"{setup.prefix}.big", b"x" * (connection.max_payload - 10), headers={"h": "v" * 64}
        )
    await app.emit(Big(blob="fine"))  # the connection is still up
    assert connection.is_connected and connection.stats["reconnects"] == 0
    await app.stop()


_SERVICE = """
import os
from dispytch import App, Event
options = {"dead_letter_stream": os.environ["DLQ"]}
if os.environ["URL"].startswith("nats://"):
    options["stream"] = os.environ["STREAM"]
app = App(os.environ["URL"], group=os.environ["GROUP"], **options)

@app.handler(topic=os.environ["TOPIC"], event="e")
async def handle(event: Event[dict]) -> None: ...
"""


async def test_a_connection_closed_for_good_stops_dispytch_run_with_an_error(
    setup: Setup, tmp_path: Path
) -> None:
    # nats-py closes a connection for good on most -ERR lines of the server (it never
    # reconnects): JetStream used to end its fetch loops (exit code 0), core NATS stayed up deaf.
    (tmp_path / "svc.py").write_text(_SERVICE)
    async with FaultyProxy(4222) as proxy:
        env = {
            **os.environ,
            "URL": setup.url(proxy.port),
            "GROUP": f"g_{setup.uid}",
            "STREAM": setup.stream,
            "DLQ": setup.dlq,
            "TOPIC": f"{setup.prefix}.t",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dispytch",
            "run",
            "svc:app",
            cwd=tmp_path,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        log = b""
        try:
            async with asyncio.timeout(60):
                while b"listening as group" not in log:
                    line = await proc.stderr.readline()
                    assert line, log.decode(errors="replace")
                    log += line
            proxy.inject(b"-ERR 'Unknown Protocol Operation'\r\n")
            async with asyncio.timeout(30):
                log += await proc.stderr.read()
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert code != 0, log.decode(errors="replace")
    assert b"closed for good" in log


# -- items 6 and 7: the fallback destination, original headers -----------------------------------


def _failure() -> Failure:
    return Failure("handler", "RuntimeError", "boom", "h", 3, 1)


async def _consumer(setup: Setup, backend: Any) -> Any:
    consumer = backend.consumer(f"g_{setup.uid}", prefetch=8)
    await consumer.start([TopicPattern.parse(f"{setup.prefix}.{{k}}", ".")])
    return consumer


async def test_the_fallback_takes_what_the_topic_subject_cannot_even_at_max_payload(
    setup: Setup,
) -> None:
    backend = setup.backend()
    await backend.connect()
    consumer = await _consumer(setup, backend)
    connection = backend.connection
    assert connection is not None
    topic = f"{setup.prefix}.full"
    full = Message(topic, b"z" * connection.max_payload, None, {"trace": "t-2"})
    started = time.monotonic()
    with pytest.raises(EmitError, match="max_payload"):  # never sent: the server would close
        await consumer.dead_letter(full, _failure())
    assert time.monotonic() - started < 2
    assert await consumer.dead_letter_fallback(full, _failure()) is True
    small = Message(topic, b"raw", b"k\xff", {"trace": "t-3"})
    assert await consumer.dead_letter_fallback(small, _failure()) is True
    assert connection.is_connected and connection.stats["reconnects"] == 0
    await consumer.close()
    await backend.close()
    cut, whole = await _dead(setup, topic, 2)
    assert cut.headers["x-dispytch-payload-truncated"] == str(connection.max_payload)
    assert 0 < len(cut.payload) < connection.max_payload and cut.headers["trace"] == "t-2"
    assert whole.payload == b"raw" and whole.key == b"k\xff" and whole.headers["trace"] == "t-3"
    assert whole.headers["x-dispytch-original-topic"] == topic


async def test_dead_letters_keep_the_original_headers(setup: Setup) -> None:
    app = App(setup.url(), group=f"g_{setup.uid}", **setup.options())
    topic = f"{setup.prefix}.h"

    @app.handler(topic=topic, event="e")
    async def broken(event: Event[dict]) -> None:
        raise RuntimeError("boom")

    await app.start()
    await setup.nc.publish(
        topic, envelope(1), headers={"traceparent": "00-abc-01", "x-dispytch-reason": "forged"}
    )
    [dead] = await _dead(setup, topic, 1)
    assert dead.headers["traceparent"] == "00-abc-01"
    assert dead.reason == "handler"
    await app.stop()


# -- item 9: read-ahead bounded in bytes --------------------------------------------------------

_PUBLISHER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect("nats://127.0.0.1:4222")
    payload = b"x" * int(sys.argv[2])
    for i in range(200):
        await nc.publish(sys.argv[1], payload)
        if i % 5 == 4:
            await nc.flush()
            await asyncio.sleep(0.05)
    await nc.flush()
    await nc.close()
asyncio.run(main())
"""


async def test_core_read_ahead_is_bounded_in_bytes_under_large_messages() -> None:
    require_broker("nats_core", 4222)
    subject, bound = f"big.{uuid.uuid4().hex[:10]}", 8 * 1024 * 1024
    nc = await nats.connect(SERVER)
    consumer = NATSCoreConsumer(
        nc, queue="big", max_buffer_bytes=bound, pending_bytes_limit=8 * 1024 * 1024
    )
    await consumer.start([TopicPattern.parse(subject, ".")])
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PUBLISHER, subject, str(BIG)
    )
    peaks = await read_slowly(
        consumer,
        lambda message: consumer.buffered_bytes,
        lambda got: publisher.returncode is not None,
        idle=1.0,
    )
    assert await publisher.wait() == 0
    assert peaks.held <= bound + BIG
    assert 0 < peaks.got < 200  # the rest was dropped by nats-py's bounded queue
    # 200 x 900 KB = 180 MB if everything were held; generous margin for the client's buffers.
    assert peaks.rss_growth < 100 * 1024 * 1024, peaks.rss_growth // 2**20
    await consumer.close()
    await nc.close()


async def test_a_core_backend_reports_the_messages_nats_py_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_broker("nats_core", 4222)
    subject = f"drop.{uuid.uuid4().hex[:10]}"
    backend = NATSCoreBackend("nats+core://127.0.0.1:4222", buffer_size=1, pending_msgs_limit=5)
    await backend.connect()
    consumer = backend.consumer("drops", prefetch=1)
    await consumer.start([TopicPattern.parse(subject, ".")])
    stream = consumer.listen()
    first = asyncio.ensure_future(anext(stream))
    for i in range(50):  # nobody takes them: 1 buffered, 5 queued by nats-py, the rest dropped
        await backend.producer().send(subject, str(i).encode())
    await wait_until(lambda: consumer.dropped > 0, what="drops to be counted")  # type: ignore[attr-defined]
    assert any(
        r.levelname == "ERROR" and "read-ahead buffer full" in r.getMessage()
        for r in caplog.records
    )
    await first
    await stream.aclose()  # type: ignore[attr-defined]
    await backend.close()


async def test_jetstream_read_ahead_is_bounded_in_bytes() -> None:
    require_broker("nats", 4222)
    uid = uuid.uuid4().hex[:10]
    stream_name, subject, bound = f"b_{uid}", f"b_{uid}.x", 3 * BIG
    nc = await nats.connect(SERVER)
    js = nc.jetstream()
    await js.add_stream(name=stream_name, subjects=[f"b_{uid}.>"])
    try:
        for _ in range(20):
            await js.publish(subject, b"x" * BIG)
        sub = await js.pull_subscribe(subject, durable="bytes", stream=stream_name)
        consumer = NATSConsumer(sub, prefetch=64, max_buffer_bytes=bound)
        peaks = await read_slowly(
            consumer, lambda message: consumer.held_bytes, lambda got: got == 20, ack=True
        )
        assert peaks.held <= bound + BIG
        await consumer.close()
    finally:
        await nc.close()
        await delete_streams(SERVER, stream_name)


# -- item 11: core NATS never goes deaf after a timed-out confirmation ---------------------------


def _core_app(port: int, got: list[str], publish_timeout: float) -> tuple[App, type[EventBase]]:
    """A core NATS app that records the events it handles, and the event class it emits."""
    subject = f"deaf.{uuid.uuid4().hex[:10]}"
    app = App(f"nats+core://127.0.0.1:{port}", group="deaf", publish_timeout=publish_timeout)

    @app.handler(topic=subject, event="e")
    async def handle(event: Event[dict]) -> None:
        got.append(event.body["n"])

    class E(EventBase):
        __topic__ = subject
        __event_type__ = "e"
        n: str

    return app, E


@pytest.mark.private_access
async def test_core_nats_hears_again_after_an_emit_timed_out_on_a_stalled_connection() -> None:
    require_broker("nats_core", 4222)
    got: list[str] = []
    async with FaultyProxy(4222) as proxy:
        app, E = _core_app(proxy.port, got, publish_timeout=0.5)
        await app.start()
        await app.emit(E(n="1"))
        await wait_until(lambda: got == ["1"], what="the first event")
        proxy.stall()
        with pytest.raises(ProducerTimeout):
            await app.emit(E(n="2"))
        proxy.resume()  # the PONG of the timed-out emit arrives late
        for n in ("3", "4"):
            await app.emit(E(n=n))
        await wait_until(lambda: got[-2:] == ["3", "4"], what="events after the stall")
        await app.stop()


@pytest.mark.private_access
async def test_a_deaf_connection_confirms_no_emit_and_is_revived() -> None:
    # However the reader dies: an emit is never reported confirmed while nothing is heard,
    # and the consumer's watchdog makes the connection reconnect.
    require_broker("nats_core", 4222)
    got: list[str] = []
    app, E = _core_app(4222, got, publish_timeout=2)
    await app.start()
    connection = app.backend.connection  # type: ignore[attr-defined]
    connection._reading_task.cancel()  # the reader is gone; the connection looks connected
    await asyncio.sleep(0)
    assert connection.is_connected
    with pytest.raises(EmitError):
        await app.emit(E(n="lost"))
    await wait_until(lambda: connection.stats["reconnects"] >= 1, what="the reconnect")

    async def heard() -> bool:
        try:
            await app.emit(E(n="back"))
        except EmitError:
            return False
        return await _soon(lambda: "back" in got)

    await eventually(heard, "an event handled after the reconnect", timeout=20)
    await app.stop()
