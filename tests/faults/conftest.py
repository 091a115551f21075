"""Fixtures for the fault tests: durable brokers only (Kafka, RabbitMQ).

A broker runs when its name is in ``DISPYTCH_BROKERS``; listed but unreachable fails. The
brokers are the ones ``scripts/brokers.sh`` manages, found with the same environment variables
(``KAFKA_PORT``, ``RABBITMQ_PORT``), so the suite can run against a private pair of brokers::

    export BROKERS_RUN_DIR=/tmp/faults KAFKA_PORT=19092 KAFKA_CONTROLLER_PORT=19093 \\
           RABBITMQ_PORT=5682 RABBITMQ_NODENAME=faults@localhost
    bash scripts/brokers.sh up kafka rabbitmq
    DISPYTCH_BROKERS=kafka,rabbitmq python -m pytest tests/faults
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


@dataclass(frozen=True)
class Broker:
    name: str
    url: str
    port: int


def _brokers() -> dict[str, Broker]:
    kafka = int(os.environ.get("KAFKA_PORT") or 9092)
    rabbitmq = int(os.environ.get("RABBITMQ_PORT") or 5672)
    return {
        "kafka": Broker("kafka", f"kafka://127.0.0.1:{kafka}", kafka),
        "rabbitmq": Broker("rabbitmq", f"amqp://guest:guest@127.0.0.1:{rabbitmq}/", rabbitmq),
    }


def _listed() -> set[str]:
    return {b.strip() for b in os.environ.get("DISPYTCH_BROKERS", "").split(",") if b.strip()}


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["kafka", "rabbitmq"])
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
async def cleanup(broker: Broker, topic: str, group: str) -> AsyncIterator[None]:
    """After the test, delete what it left on the shared broker (best effort)."""
    yield
    with contextlib.suppress(Exception):
        if broker.name == "kafka":
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
    broker: Broker, topic: str, group: str, records: Records, cleanup: None
) -> Iterator[Callable[..., ConsumerProcess]]:
    """Build consumer processes in one group; any left running at the end are killed."""
    made: list[ConsumerProcess] = []

    def build(name: str = "c", **settings: Any) -> ConsumerProcess:
        consumer = ConsumerProcess(
            broker.url, topic, group, records.directory, name=name, **settings
        )
        made.append(consumer)
        return consumer

    yield build
    for consumer in made:
        consumer.cleanup()


@pytest.fixture
async def producer_app(broker: Broker, uid: str) -> AsyncIterator[App]:
    """An app with no handlers: it only emits (and reads dead letters back)."""
    app = App(broker.url, group=f"fault_producer_{uid}")
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
