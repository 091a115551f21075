"""Fixtures for the fault tests: durable backends only (Kafka, RabbitMQ, NATS JetStream,
Redis Streams).

A backend runs when its name is in ``DISPYTCH_BROKERS`` (``kafka``, ``rabbitmq``, ``nats``,
``redis_streams``); listed but unreachable fails. The brokers are the ones ``scripts/brokers.sh``
manages, found with the same environment variables (``KAFKA_PORT``, ``RABBITMQ_PORT``,
``NATS_PORT``, ``REDIS_PORT``), so the suite can run against private brokers::

    export BROKERS_RUN_DIR=/tmp/faults KAFKA_PORT=19092 KAFKA_CONTROLLER_PORT=19093 \\
           RABBITMQ_PORT=5682 RABBITMQ_NODENAME=faults@localhost REDIS_PORT=16379 NATS_PORT=14222
    bash scripts/brokers.sh up kafka rabbitmq nats redis
    DISPYTCH_BROKERS=kafka,rabbitmq,nats,redis_streams python -m pytest tests/faults
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dispytch import App
from tests.faults.harness import ConsumerProcess, Records

#: Every durable backend the fault tests know; a test narrows it with ``indirect`` params.
BACKENDS = ["kafka", "rabbitmq", "nats", "redis_streams"]


@dataclass(frozen=True)
class Broker:
    name: str  # the backend, as listed in DISPYTCH_BROKERS
    url: str
    port: int
    service: str  # its name for scripts/brokers.sh


def _port(variable: str, default: int) -> int:
    return int(os.environ.get(variable) or default)


def _brokers() -> dict[str, Broker]:
    kafka = _port("KAFKA_PORT", 9092)
    rabbitmq = _port("RABBITMQ_PORT", 5672)
    nats = _port("NATS_PORT", 4222)
    redis = _port("REDIS_PORT", 6379)
    return {
        "kafka": Broker("kafka", f"kafka://127.0.0.1:{kafka}", kafka, "kafka"),
        "rabbitmq": Broker(
            "rabbitmq", f"amqp://guest:guest@127.0.0.1:{rabbitmq}/", rabbitmq, "rabbitmq"
        ),
        "nats": Broker("nats", f"nats://127.0.0.1:{nats}", nats, "nats"),
        "redis_streams": Broker(
            "redis_streams", f"redis+streams://127.0.0.1:{redis}/0", redis, "redis"
        ),
    }


def _listed() -> set[str]:
    return {b.strip() for b in os.environ.get("DISPYTCH_BROKERS", "").split(",") if b.strip()}


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=BACKENDS)
def broker(request: pytest.FixtureRequest) -> Broker:
    spec = _brokers()[request.param]
    if spec.name not in _listed():
        pytest.skip(f"{spec.name} not in DISPYTCH_BROKERS")
    if not _reachable(spec.port):
        pytest.fail(
            f"{spec.name} is listed in DISPYTCH_BROKERS but 127.0.0.1:{spec.port} does not "
            "answer; run: bash scripts/brokers.sh up"
        )
    return spec


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def topic(uid: str) -> str:
    return f"fault_{uid}"


@pytest.fixture
def records(tmp_path: Path) -> Records:
    return Records(tmp_path / "records")


@pytest.fixture
def group(uid: str) -> str:
    return f"fault_{uid}"


@pytest.fixture
def backend_options(broker: Broker, uid: str) -> dict[str, Any]:
    """Options for every App of the test (consumer processes and the producer app).

    NATS and Redis Streams redeliver what a dead process held only after a timeout (JetStream's
    ``ack_wait``, Redis' ``claim_idle_ms``; 30 s by default): 2 s keeps the scenarios quick.
    NATS gets a stream per test, so the test can delete everything it created.
    """
    if broker.name == "nats":
        return {
            "ack_wait": 2.0,
            "stream": f"fault_{uid}",
            "dead_letter_stream": f"fault_{uid}_dlq",
        }
    if broker.name == "redis_streams":
        return {"claim_idle_ms": 2000}
    return {}


@pytest.fixture
async def cleanup(
    broker: Broker, topic: str, group: str, backend_options: dict[str, Any]
) -> AsyncIterator[None]:
    """After the test, delete what it left on the broker (best effort)."""
    yield
    with contextlib.suppress(Exception):
        if broker.name == "nats":
            import nats

            connection = await nats.connect(broker.url)
            try:
                js = connection.jetstream()
                for stream in (backend_options["stream"], backend_options["dead_letter_stream"]):
                    with contextlib.suppress(Exception):
                        await js.delete_stream(stream)
            finally:
                await connection.close()
        elif broker.name == "redis_streams":
            from redis.asyncio import Redis

            redis = Redis(host="127.0.0.1", port=broker.port)
            try:
                await redis.delete(topic, f"{topic}.dlq")
            finally:
                await redis.aclose()
        elif broker.name == "kafka":
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{broker.port}")
            await admin.start()
            try:
                await admin.delete_topics([topic, f"{topic}.dlq"])
            finally:
                await admin.close()
        else:
            import aio_pika

            connection = await aio_pika.connect(broker.url)
            async with connection:
                for queue in (group, f"{topic}.dlq"):
                    with contextlib.suppress(Exception):
                        channel = await connection.channel()
                        await channel.queue_delete(queue)


@pytest.fixture
def consumers(
    broker: Broker,
    topic: str,
    group: str,
    records: Records,
    backend_options: dict[str, Any],
    cleanup: None,
) -> Iterator[Callable[..., ConsumerProcess]]:
    """Build consumer processes in one group; any left running at the end are killed."""
    made: list[ConsumerProcess] = []

    def build(name: str = "c", **settings: Any) -> ConsumerProcess:
        settings.setdefault("options", backend_options)
        consumer = ConsumerProcess(
            broker.url, topic, group, records.directory, name=name, **settings
        )
        made.append(consumer)
        return consumer

    yield build
    for consumer in made:
        consumer.cleanup()


@pytest.fixture
async def producer_app(
    broker: Broker, uid: str, backend_options: dict[str, Any]
) -> AsyncIterator[App]:
    """An app with no handlers: it only emits (and reads dead letters back)."""
    app = App(broker.url, group=f"fault_producer_{uid}", **backend_options)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
