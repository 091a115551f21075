"""NATS: once TLS is asked for, credentials never leave without it. A fake server that does not
offer TLS (or an attacker who strips ``tls_required`` from its INFO line) records every byte
it receives; the password must not be among them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

import dispytch.nats.backend as nats_backend
from dispytch import App
from dispytch.errors import ConnectError

SECRET = "nats-secret-pw"


class FakeServer:
    """Sends a plaintext INFO (no tls_required) and keeps what clients send."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {
            "server_id": "fake",
            "version": "2.9.10",
            "proto": 1,
            "max_payload": 1 << 20,
            "auth_required": True,
        }
        writer.write(f"INFO {json.dumps(info)}\r\n".encode())
        await writer.drain()
        try:
            while chunk := await reader.read(4096):
                self.received += chunk
        except ConnectionError:
            pass
        writer.close()

    async def __aenter__(self) -> FakeServer:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with FakeServer() as server:
        yield server


@pytest.mark.parametrize("scheme", ["tls", "nats+tls", "nats+core+tls"])
async def test_credentials_are_not_sent_to_a_server_without_tls(
    fake: FakeServer, scheme: str
) -> None:
    app = App(f"{scheme}://user:{SECRET}@127.0.0.1:{fake.port}", connect_timeout=2)
    with pytest.raises(ConnectError, match="does not offer TLS"):
        await app.start()
    assert SECRET.encode() not in fake.received
    assert b"CONNECT" not in fake.received


async def test_tls_asked_through_options_is_kept_too(fake: FakeServer) -> None:
    import ssl

    app = App(f"nats://{SECRET}@127.0.0.1:{fake.port}", ssl_context=ssl.create_default_context())
    with pytest.raises(ConnectError, match="does not offer TLS"):
        await app.start()
    assert SECRET.encode() not in fake.received


async def test_fallback_probe_when_the_client_has_no_hook(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nats_backend, "GUARDED", False)
    app = App(f"tls://user:{SECRET}@127.0.0.1:{fake.port}", connect_timeout=2)
    with pytest.raises(ConnectError, match="does not offer TLS"):
        await app.start()
    assert b"CONNECT" not in fake.received


async def test_without_tls_the_fake_server_does_see_the_password(
    fake: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The harness can tell: plain nats:// sends CONNECT with the password (and warns)."""
    app = App(f"nats://user:{SECRET}@127.0.0.1:{fake.port}", connect_timeout=1)
    with pytest.raises(ConnectError):
        await app.start()
    assert SECRET.encode() in fake.received
    assert "sent over a plaintext connection" in caplog.text
    assert SECRET not in caplog.text
