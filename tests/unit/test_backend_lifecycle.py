"""The Backend base owns the life cycle every backend shares: connect once, close consumers
first, close idempotently, scrub secrets."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator

import pytest

from dispytch.errors import ConfigurationError
from dispytch.seam import Backend, Consumer, Message, Producer


class _Consumer(Consumer):
    def __init__(self, log: list[str], name: str, fails: bool = False) -> None:
        self.log, self.name, self.fails = log, name, fails

    async def listen(self) -> AsyncIterator[Message]:  # pragma: no cover - never listened to
        return
        yield

    async def ack(self, message: Message) -> None:  # pragma: no cover
        pass

    async def close(self) -> None:
        self.log.append(f"close {self.name}")
        if self.fails:
            raise RuntimeError(f"{self.name} failed to close")


class _Producer(Producer):
    async def send(self, topic, payload, config=None, *, headers=None, key=None) -> None:  # type: ignore[no-untyped-def]
        pass


class _Backend(Backend):
    def __init__(self, url: str = "test://user:s3cret@host/", **options: object) -> None:
        super().__init__(url, **options)
        self.log: list[str] = []
        self._producer: _Producer | None = None

    async def open_connections(self) -> None:
        self.log.append("open")
        await asyncio.sleep(0.01)  # a concurrent connect() waits for this one
        self._producer = _Producer()

    def producer(self) -> _Producer:
        return self.require(self._producer)

    def make_consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> Consumer:
        return _Consumer(self.log, group, fails=group == "broken")

    async def close_connections(self) -> None:
        self.log.append("close connections")
        self._producer = None


async def test_connect_runs_once_even_when_called_concurrently() -> None:
    backend = _Backend()
    await asyncio.gather(backend.connect(), backend.connect(), backend.connect())
    await backend.connect()
    assert backend.log == ["open"] and backend.connected
    assert isinstance(backend.producer(), _Producer)


async def test_producer_before_connect_says_to_connect() -> None:
    backend = _Backend()
    with pytest.raises(ConfigurationError, match="not connected; call 'await backend"):
        backend.producer()


async def test_close_closes_consumers_first_each_one_and_is_idempotent() -> None:
    backend = _Backend()
    await backend.connect()
    backend.consumer("a", prefetch=1)
    backend.consumer("broken", prefetch=1)
    backend.consumer("c", prefetch=1)
    assert len(backend.consumers) == 3
    with pytest.raises(RuntimeError, match="broken failed to close"):
        await backend.close()
    assert backend.log == ["open", "close a", "close broken", "close c", "close connections"]
    assert not backend.connected and backend.consumers == ()
    await backend.close()  # again: nothing left to close but the (released) connections
    assert backend.log[-1] == "close connections" and backend.log.count("close a") == 1
    await backend.connect()  # and it can connect again
    assert backend.log.count("open") == 2


def test_repr_and_redact_keep_secrets_out() -> None:
    backend = _Backend("test://user:s3cret@host/", token="t0ken-value")
    assert repr(backend) == "_Backend('test://user:***@host/')"
    assert backend.redact("failed with s3cret and t0ken-value") == "failed with *** and ***"


BUILT_IN = [
    ("dispytch.memory", "MemoryBackend"),
    ("dispytch.kafka", "KafkaBackend"),
    ("dispytch.rabbitmq", "RabbitMQBackend"),
    ("dispytch.redis", "RedisBackend"),
    ("dispytch.redis.streams", "RedisStreamsBackend"),
    ("dispytch.nats", "NATSBackend"),
    ("dispytch.nats.core", "NATSCoreBackend"),
]


@pytest.mark.parametrize(("module", "name"), BUILT_IN, ids=[n for _, n in BUILT_IN])
def test_every_backend_uses_the_base_life_cycle(module: str, name: str) -> None:
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError:
        pytest.skip(f"{module} needs its extra")
    for method in ("connect", "close", "consumer", "redact", "require", "__repr__"):
        assert getattr(cls, method) is getattr(Backend, method), f"{name}.{method} is its own"
