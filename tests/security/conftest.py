"""The secured brokers of ``scripts/brokers.sh --profile secure`` (TLS + authentication).

Tests against them run when ``DISPYTCH_BROKERS`` lists ``secure`` (``scripts/test.sh`` starts the
profile then). Where they are read from: ``$DISPYTCH_SECURE_DIR/profile.json`` (default
``/tmp/dispytch-secure``, what the profile writes: ports, certificate paths, credentials).
Tests that also need a plaintext server use the default profile's brokers, listed by their
backend name as everywhere else.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import listed_brokers

#: Every backend, as named in DISPYTCH_BROKERS.
BACKENDS = ["kafka", "rabbitmq", "redis", "redis_streams", "nats", "nats_core"]

#: The default (plaintext) profile: backend -> (URL without credentials, port).
PLAINTEXT = {
    "kafka": ("kafka://127.0.0.1:9092", 9092),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672/", 5672),
    "redis": ("redis://127.0.0.1:6379/0", 6379),
    "redis_streams": ("redis+streams://127.0.0.1:6379/0", 6379),
    "nats": ("nats://127.0.0.1:4222", 4222),
    "nats_core": ("nats+core://127.0.0.1:4222", 4222),
}


@dataclass(frozen=True)
class SecureProfile:
    raw: dict[str, Any]

    @property
    def ca(self) -> str:
        return str(self.raw["tls"]["ca"])

    @property
    def other_ca(self) -> str:
        return str(self.raw["tls"]["other_ca"])

    @property
    def user(self) -> str:
        return str(self.raw["user"])

    @property
    def password(self) -> str:
        return str(self.raw["password"])

    @property
    def token(self) -> str:
        return str(self.raw["token"])

    def port(self, backend: str) -> int:
        server = {"redis_streams": "redis", "nats_core": "nats"}.get(backend, backend)
        return int(self.raw[server]["port"])

    def url(
        self, backend: str, *, password: str | None = None, tls: bool = True, query: str = ""
    ) -> str:
        """The backend's URL on its secured broker, with the user and ``password``."""
        pw = self.password if password is None else password
        port = self.port(backend)
        auth = f"{self.user}:{pw}@127.0.0.1:{port}"
        vhost = self.raw["rabbitmq"]["vhost"]
        plain, secure = {
            "kafka": (f"kafka://{auth}", f"kafka+ssl://{auth}"),
            "rabbitmq": (f"amqp://{auth}/{vhost}", f"amqps://{auth}/{vhost}"),
            "redis": (f"redis://{auth}/0", f"rediss://{auth}/0"),
            "redis_streams": (f"redis+streams://{auth}/0", f"rediss+streams://{auth}/0"),
            "nats": (f"nats://{auth}", f"tls://{auth}"),
            "nats_core": (f"nats+core://{auth}", f"nats+core+tls://{auth}"),
        }[backend]
        url = secure if tls else plain
        return f"{url}?{query}" if query else url


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def secure_profile() -> SecureProfile:
    """The secured brokers' profile; skips unless DISPYTCH_BROKERS lists ``secure``."""
    if "secure" not in listed_brokers():
        pytest.skip("secure not in DISPYTCH_BROKERS (bash scripts/brokers.sh --profile secure up)")
    path = Path(os.environ.get("DISPYTCH_SECURE_DIR", "/tmp/dispytch-secure")) / "profile.json"
    if not path.exists():
        pytest.fail(
            f"secure is listed but {path} is missing: bash scripts/brokers.sh --profile secure up"
        )
    profile = SecureProfile(json.loads(path.read_text()))
    for server in ("kafka", "rabbitmq", "redis", "nats"):
        if not _answers(profile.port(server)):
            pytest.fail(f"the secure {server} (port {profile.port(server)}) does not answer")
    return profile


@pytest.fixture
def secure() -> SecureProfile:
    return secure_profile()


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)
