"""Fixtures of the operations tests: a live backend (memory, or a broker listed in
``DISPYTCH_BROKERS``), its app options, and the clean-up of what a test left on it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conformance.conftest import BACKENDS, BackendUnderTest, _delete_redis_keys
from tests.helpers import require_broker

#: The backends with a broker in another process.
LIVE = [name for name in BACKENDS if name != "memory"]


def _checked(name: str) -> BackendUnderTest:
    spec = BACKENDS[name]
    if spec.port is not None:
        require_broker(spec.name, spec.port)
    return spec


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> BackendUnderTest:
    """Every backend: memory, and each live broker listed in DISPYTCH_BROKERS."""
    return _checked(request.param)


@pytest.fixture(params=LIVE)
def live_backend(request: pytest.FixtureRequest) -> BackendUnderTest:
    """Each live broker listed in DISPYTCH_BROKERS (for tests across processes)."""
    return _checked(request.param)


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def topic(uid: str) -> str:
    """A topic valid on every broker (letters, digits, '_')."""
    return f"ops_{uid}"


@pytest.fixture
async def options(request: pytest.FixtureRequest, uid: str) -> AsyncIterator[dict[str, Any]]:
    """App options for the backend under test (``backend`` or ``live_backend``); what the
    apps left on the broker is deleted afterwards."""
    name = "live_backend" if "live_backend" in request.fixturenames else "backend"
    backend: BackendUnderTest = request.getfixturevalue(name)
    out: dict[str, Any] = {"shutdown_timeout": 5.0}
    if backend.name == "rabbitmq":
        out["queue_arguments"] = {"x-expires": 60_000}
    if backend.name == "nats":
        out["stream"] = f"ops_{uid}"
        out["dead_letter_stream"] = f"ops_{uid}_dlq"
    if backend.name == "nats_core":
        out["dead_letter_stream"] = f"ops_{uid}_dlq"
    yield out
    if backend.name == "redis_streams":
        await _delete_redis_keys(backend.url, uid)
    if backend.name in ("nats", "nats_core"):
        from tests.backends.nats_streams import delete_streams

        await delete_streams("nats://127.0.0.1:4222", f"ops_{uid}", f"ops_{uid}_dlq")
