"""One behaviour suite, run against every backend.

``memory`` always runs. A live broker runs when its name is in ``DISPYTCH_BROKERS``
(comma-separated: ``kafka,rabbitmq,redis,redis_streams,nats,nats_core``), which
``scripts/test.sh`` sets after starting the brokers; a listed broker that does not answer
fails the run instead of being skipped.

**Your own backend** (``docs/backends/custom.md``) runs too, as ``custom``, when
``DISPYTCH_CONFORMANCE_BACKEND`` names its class (``module:Class``, importable) and
``DISPYTCH_CONFORMANCE_URL`` a URL it takes (its scheme is registered for the class)::

    DISPYTCH_CONFORMANCE_BACKEND=queue_backend:QueueBackend \
    DISPYTCH_CONFORMANCE_URL=queue:// python -m pytest tests/conformance -k custom

``DISPYTCH_CONFORMANCE_LACKS`` lists what it does not carry, comma-separated: ``keys`` (an
ordering key with each message), ``headers``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from dispytch import App
from dispytch.backend import register_backend
from tests.helpers import require_broker


@dataclass(frozen=True)
class BackendUnderTest:
    name: str
    url: str
    port: int | None
    #: does the broker carry an ordering key with each message (Kafka key, AMQP header)?
    carries_keys: bool = True
    #: does a failed message get redelivered after the consumer dies (durable backends)?
    durable: bool = True
    #: topic segment delimiter used for dynamic-topic tests
    delimiter: str = ":"
    #: does a message carry headers (Redis Pub/Sub carries the payload only)?
    carries_headers: bool = True


BACKENDS = {
    "memory": BackendUnderTest("memory", "memory://", None),
    "kafka": BackendUnderTest("kafka", "kafka://127.0.0.1:9092", 9092, delimiter="."),
    "rabbitmq": BackendUnderTest(
        "rabbitmq", "amqp://guest:guest@127.0.0.1:5672/", 5672, delimiter="."
    ),
    "redis": BackendUnderTest(
        "redis",
        "redis://127.0.0.1:6379/0",
        6379,
        carries_keys=False,
        durable=False,
        carries_headers=False,
    ),
    "redis_streams": BackendUnderTest("redis_streams", "redis+streams://127.0.0.1:6379/0", 6379),
    "nats": BackendUnderTest("nats", "nats://127.0.0.1:4222", 4222, delimiter="."),
    "nats_core": BackendUnderTest(
        "nats_core", "nats+core://127.0.0.1:4222", 4222, durable=False, delimiter="."
    ),
}


def _custom() -> BackendUnderTest | None:
    """The backend ``DISPYTCH_CONFORMANCE_BACKEND`` names, registered for its URL's scheme."""
    target = os.environ.get("DISPYTCH_CONFORMANCE_BACKEND")
    if not target:
        return None
    url = os.environ.get("DISPYTCH_CONFORMANCE_URL", "custom://")
    module, _, name = target.partition(":")
    cls = getattr(__import__(module, fromlist=[name]), name)
    register_backend(url.partition("://")[0], target)
    lacks = {w.strip() for w in os.environ.get("DISPYTCH_CONFORMANCE_LACKS", "").split(",")}
    return BackendUnderTest(
        "custom",
        url,
        None,
        carries_keys="keys" not in lacks,
        delimiter=cls.topic_delimiter,
        carries_headers="headers" not in lacks,
    )


if (custom := _custom()) is not None:
    BACKENDS["custom"] = custom


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> BackendUnderTest:
    spec = BACKENDS[request.param]
    if spec.port is not None:
        require_broker(spec.name, spec.port)
    return spec


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def topic(uid: str) -> str:
    """A fresh topic name valid on every broker (letters, digits, '_', '-')."""
    return f"conf_{uid}"


@pytest.fixture
async def make_app(backend: BackendUnderTest, uid: str) -> AsyncIterator[Callable[..., App]]:
    """Build apps on the backend under test; each gets a fresh consumer group and is stopped."""
    apps: list[App] = []
    counter = iter(range(1000))

    def build(**options: Any) -> App:
        url = f"memory://conf-{uid}" if backend.name == "memory" else backend.url
        options.setdefault("group", f"g_{uid}_{next(counter)}")
        options.setdefault("shutdown_timeout", 5.0)
        if backend.name == "rabbitmq":
            # Group queues are durable by design; let the test ones expire once unused.
            options.setdefault("queue_arguments", {"x-expires": 60_000})
        if backend.name == "nats":
            # Streams of their own, deleted below, so test subjects never pile up on the server.
            options.setdefault("stream", f"conf_{uid}")
            options.setdefault("dead_letter_stream", f"conf_{uid}_dlq")
        if backend.name == "nats_core":
            options.setdefault("dead_letter_stream", f"conf_{uid}_dlq")
        app = App(url, **options)
        apps.append(app)
        return app

    yield build
    for app in apps:
        if app.listener is not None or app._emitter is not None:
            await app.stop()
    if backend.name == "redis_streams" and apps:
        await _delete_redis_keys(backend.url, uid)
    if backend.name == "nats" and apps:
        from tests.backends.nats_streams import delete_streams

        await delete_streams(backend.url, f"conf_{uid}", f"conf_{uid}_dlq")
    if backend.name == "nats_core" and apps:
        from tests.backends.nats_streams import delete_streams

        await delete_streams("nats://127.0.0.1:4222", f"conf_{uid}_dlq")


async def _delete_redis_keys(url: str, uid: str) -> None:
    """DEL the streams (and their .dlq) a test created: every key holding the test's uid."""
    from redis.asyncio import Redis

    client = Redis.from_url(url.replace("+streams", "", 1))
    try:
        keys = [key async for key in client.scan_iter(match=f"*{uid}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
