"""Kafka exactly-once consume-transform-produce (``transactional_id``): a service SIGKILLed
mid-stream and restarted; the output topic, read with ``read_committed``, holds each input's
output exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from dispytch import App, Event, EventBase
from tests.helpers import require_broker

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
PORT = int(os.environ.get("KAFKA_PORT") or 9092)
SERVERS = f"127.0.0.1:{PORT}"
N = int(os.environ.get("DISPYTCH_EOS_EVENTS") or 2000)


@pytest.fixture(autouse=True)
def _kafka() -> None:
    require_broker("kafka", PORT)


def _numbered(topic: str) -> type[EventBase]:
    class Numbered(EventBase):
        __topic__ = topic
        __event_type__ = "numbered"
        seq: int

    return Numbered


class Service:
    """``dispytch run tests.backends.eos_app:build`` in its own process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dispytch", "run", "tests.backends.eos_app:build"],
                cwd=REPO,
                env={**os.environ, **self.env, "DISPYTCH_BROKER_URL": f"kafka://{SERVERS}"},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


async def _outputs(topic: str, isolation: str) -> Counter[int]:
    """Every record of ``topic`` (one partition) as ``isolation_level`` shows it: seq -> count."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=SERVERS,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation,
    )
    await reader.start()
    try:
        tp = TopicPartition(topic, 0)
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        # With read_committed this is the last stable offset: open transactions not included.
        end = (await reader.end_offsets([tp]))[tp]
        counts: Counter[int] = Counter()
        deadline = time.monotonic() + 30
        while await reader.position(tp) < end and time.monotonic() < deadline:
            for records in (await reader.getmany(tp, timeout_ms=200)).values():
                for record in records:
                    body = record.value.split(b'"seq": ', 1)[1]
                    counts[int(body.split(b",", 1)[0])] += 1
        return counts
    finally:
        await reader.stop()


async def _wait(predicate, timeout: float, what: str, service: Service) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert service.process is not None
        if service.process.poll() is not None:
            raise AssertionError(
                f"the service exited while waiting for {what}:\n"
                + service.log.read_text(errors="replace")[-3000:]
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}:\n" + service.log.read_text(errors="replace")[-3000:]
            )
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("transactional", [True])
async def test_sigkill_mid_stream_outputs_each_input_exactly_once(
    tmp_path: Path, transactional: bool
) -> None:
    uid = uuid.uuid4().hex[:10]
    source, output = f"eos_in_{uid}", f"eos_out_{uid}"
    service = Service(
        {
            "EOS_INPUT": source,
            "EOS_OUTPUT": output,
            "EOS_GROUP": f"eos_{uid}",
            "EOS_TRANSACTIONAL_ID": f"eos_{uid}" if transactional else "",
            "EOS_DELAY": "0.005",
        },
        tmp_path / "service.log",
    )
    producer = App(f"kafka://{SERVERS}", group=f"eos_producer_{uid}")
    await producer.start()
    try:
        Numbered = _numbered(source)
        await producer.emit_many(Numbered(seq=i) for i in range(N))
        await producer.backend._ensure_topics([output])  # type: ignore[attr-defined]
        service.start()

        async def a_third_out() -> bool:
            return len(await _outputs(output, "read_uncommitted")) >= N // 3

        await _wait(a_third_out, 120, "a third of the outputs", service)
        service.kill()
        killed_at = len(await _outputs(output, "read_committed"))
        assert killed_at < N, "the stream ended before the kill; nothing was tested"

        service.start()

        async def all_out() -> bool:
            return len(await _outputs(output, "read_committed")) >= N

        await _wait(all_out, 180, "every output after the restart", service)
        assert service.stop() == 0
        committed = await _outputs(output, "read_committed")
        uncommitted = await _outputs(output, "read_uncommitted")
    finally:
        service.cleanup()
        await producer.stop()
    twice = sorted(seq for seq, n in committed.items() if n > 1)
    print(
        f"EOS: {N} inputs, killed with {killed_at} outputs committed; read_committed: "
        f"{len(committed)} distinct, {sum(committed.values()) - len(committed)} duplicates; "
        f"read_uncommitted: {sum(uncommitted.values())} records "
        f"({sum(uncommitted.values()) - len(uncommitted)} from aborted transactions)"
    )
    assert sorted(committed) == list(range(N))
    assert not twice, f"outputs committed twice: {twice[:20]}"


async def test_transactional_app_publishes_and_commits_offsets_in_transactions() -> None:
    """In-process: outputs appear (read_committed) and the group's committed offset, written
    by the transactions, covers every input once the app stopped."""
    from aiokafka.admin import AIOKafkaAdminClient

    uid = uuid.uuid4().hex[:10]
    source, output, group = f"eos_in_{uid}", f"eos_out_{uid}", f"eos_{uid}"
    Numbered = _numbered(source)

    class Doubled(EventBase):
        __topic__ = output
        __event_type__ = "doubled"
        seq: int
        doubled: int

    app = App(f"kafka://{SERVERS}", group=group, transactional_id=f"eos_{uid}")

    @app.handler(topic=source, event="numbered")
    async def double(event: Event[dict[str, int]]) -> EventBase:
        return Doubled(seq=event.body["seq"], doubled=2 * event.body["seq"])

    await app.start()
    await app.backend._ensure_topics([output])  # type: ignore[attr-defined]
    await app.emit_many(Numbered(seq=i) for i in range(100))
    deadline = time.monotonic() + 60
    while len(await _outputs(output, "read_committed")) < 100:
        assert time.monotonic() < deadline, "outputs did not arrive"
        await asyncio.sleep(0.2)
    await app.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=SERVERS)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    assert offsets[TopicPartition(source, 0)].offset == 100
    assert sorted(await _outputs(output, "read_committed")) == list(range(100))
