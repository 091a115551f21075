"""Client internals are fenced: outside each backend's ``_compat`` module, no code reads or
writes a broker client's private state (DESIGN §5: one ``_compat`` per backend, with the
versions verified and a tested fallback)."""

from __future__ import annotations

import pathlib
import re

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "dispytch"

#: ``receiver._name``: private unless the receiver is ``self``/``cls`` (our own state).
ATTRIBUTE = re.compile(r"([\w.\])]+)\.(_[a-z]\w*)")
#: ``getattr(x, "_name"...)``.
GETATTR = re.compile(r"getattr\([^)]*\"_[a-z]")
#: Our own objects reached through an attribute (not a client's).
OURS = ("self.owner._", "self.backend._", "_compat.", "._compat", "super()._build(")


def _private(code: str) -> bool:
    if GETATTR.search(code):
        return True
    return any(receiver not in ("self", "cls") for receiver, _ in ATTRIBUTE.findall(code))


def _private_access(package: pathlib.Path) -> dict[str, str]:
    found = {}
    for path in package.rglob("*.py"):
        if path.name == "_compat.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if _private(code) and not any(ours in code for ours in OURS):
                found[f"{path.relative_to(SRC)}:{n}"] = line.strip()
    return found


@pytest.mark.parametrize("backend", ["kafka", "rabbitmq", "nats", "redis", "memory"])
def test_only_compat_touches_private_client_state(backend: str) -> None:
    assert _private_access(SRC / backend) == {}


# -- detection without a broker: the verified path on the installed clients, and the fallbacks


@pytest.fixture
def fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from tests.fallbacks import force_fallbacks

    return force_fallbacks(monkeypatch)


@pytest.mark.private_access
def test_redis_internals_are_there_on_the_installed_redis_py() -> None:
    pytest.importorskip("redis")
    from redis.asyncio import Redis
    from redis.asyncio.connection import Connection

    from dispytch.redis import _compat

    assert _compat.reply_reader(Connection()) is not None
    assert _compat.held_pool(Redis()) is not None
    assert _compat.held_pool(Redis(single_connection_client=True)) is None
    assert _compat.tls_context_supported()
    assert _compat.sentinel_following_supported()


def test_redis_fallbacks(fallbacks: list[str], caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis")
    from redis.asyncio import Redis
    from redis.asyncio.connection import Connection

    from dispytch.redis import _compat

    assert _compat.reply_reader(Connection()) is None
    assert _compat.held_pool(Redis()) is None  # the producers use the client's pipelines
    assert not _compat.tls_context_supported()
    already_warned = _compat._warned_sentinel
    assert not _compat.sentinel_following_supported()
    if not already_warned:
        assert "goes back to the old master" in caplog.text


@pytest.mark.private_access
def test_rabbitmq_internals_are_there_on_the_installed_aio_pika() -> None:
    pytest.importorskip("aio_pika")
    from dispytch.rabbitmq import _compat

    assert _compat.failover_supported()


def test_rabbitmq_fallbacks(fallbacks: list[str]) -> None:
    pytest.importorskip("aio_pika")
    from dispytch.rabbitmq import _compat

    assert not _compat.failover_supported()

    class Channel:  # confirms on, bookkeeping unknown
        publisher_confirms = True

    assert _compat.ledger(Channel()) is None
    assert _compat.protect(object()) is False


def test_nats_fallbacks(fallbacks: list[str]) -> None:
    pytest.importorskip("nats")
    from nats.aio.client import Client

    from dispytch.nats import _compat

    client = Client()
    assert _compat.reader_alive(client)  # cannot tell: alive
    assert _compat.connection_of(object()) is None
    assert _compat.consumer_name(object()) == "?"
    hardened = _compat.harden(Client())
    assert "_build_message" not in vars(hardened)  # left as nats-py made it
