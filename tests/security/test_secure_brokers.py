"""Every backend against the secured brokers (``brokers.sh --profile secure``): the right
credentials work end to end; a wrong password, an untrusted CA, plaintext to a TLS port and TLS
to a plaintext server are each refused fast, with one clear error and no secret anywhere."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from dispytch import App, Event, EventBase
from dispytch.errors import ConnectError
from tests.helpers import require_broker, wait_until
from tests.security.conftest import PLAINTEXT, SecureProfile

pytestmark = pytest.mark.timeout(90)

#: A refusal must come within this many seconds (the default connect_timeout is 4.5).
FAST = 5.0


def _topic(backend: str) -> str:
    delimiter = ":" if backend.startswith("redis") else "."
    return f"sec{delimiter}{uuid.uuid4().hex[:12]}"


async def _round_trip(url: str, backend: str, **options: Any) -> list[str]:
    topic = _topic(backend)

    class Ping(EventBase):
        __topic__ = topic
        __event_type__ = "ping"
        n: str

    app = App(url, group=f"sec-{uuid.uuid4().hex[:8]}", **options)
    got: list[str] = []

    @app.handler(topic=topic, event="ping")
    async def handle(event: Event[dict[str, Any]]) -> None:
        got.append(event.body["n"])

    async with app:
        await app.emit(Ping(n="over tls"))
        await wait_until(lambda: bool(got), timeout=30, what=f"the event on {backend}")
    return got


async def _refused(url: str, **options: Any) -> tuple[ConnectError, float]:
    app = App(url, **options)
    started = time.monotonic()
    with pytest.raises(ConnectError) as caught:
        await app.start()
    elapsed = time.monotonic() - started
    await app.backend.close()
    return caught.value, elapsed


def _no_secret(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text, f"the secret was shown: {text[:300]}"


async def test_right_credentials_work_end_to_end(
    secure: SecureProfile, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    got = await _round_trip(secure.url(backend_name), backend_name, ssl_cafile=secure.ca)
    assert got == ["over tls"]
    _no_secret(secure.password, caplog.text)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
async def test_kafka_sasl_mechanisms_over_tls(secure: SecureProfile, mechanism: str) -> None:
    url = secure.url("kafka", query=f"sasl_mechanism={mechanism}")
    got = await _round_trip(url, "kafka", ssl_cafile=secure.ca)
    assert got == ["over tls"]


@pytest.mark.parametrize("backend", ["nats", "nats_core"])
async def test_nats_token_over_tls(secure: SecureProfile, backend: str) -> None:
    port = int(secure.raw["nats_token"]["port"])
    scheme = "nats+tls" if backend == "nats" else "nats+core+tls"
    got = await _round_trip(
        f"{scheme}://{secure.token}@127.0.0.1:{port}", backend, ssl_cafile=secure.ca
    )
    assert got == ["over tls"]


async def test_ssl_context_is_used_as_given(secure: SecureProfile, backend_name: str) -> None:
    import ssl

    context = ssl.create_default_context(cafile=secure.ca)
    got = await _round_trip(secure.url(backend_name), backend_name, ssl_context=context)
    assert got == ["over tls"]


async def test_rabbitmq_user_is_limited_to_its_vhost(secure: SecureProfile) -> None:
    other = secure.raw["rabbitmq"]["other_vhost"]
    url = secure.url("rabbitmq").rsplit("/", 1)[0] + f"/{other}"
    error, elapsed = await _refused(url, ssl_cafile=secure.ca)
    assert "no access to this vhost" in str(error)
    assert elapsed < FAST


async def test_wrong_password_fails_fast_with_a_clear_error(
    secure: SecureProfile,
    backend_name: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{uuid.uuid4().hex}"
    error, elapsed = await _refused(secure.url(backend_name, password=wrong), ssl_cafile=secure.ca)
    assert elapsed < FAST
    assert "authentication failed" in str(error)
    assert f"127.0.0.1:{secure.port(backend_name)}" in str(error)
    out = capsys.readouterr()
    _no_secret(wrong, str(error), repr(error), caplog.text, out.out, out.err)


async def test_client_that_does_not_trust_the_ca_is_refused(
    secure: SecureProfile, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    error, elapsed = await _refused(secure.url(backend_name), ssl_cafile=secure.other_ca)
    assert elapsed < FAST
    assert "certificate is not trusted" in str(error)
    _no_secret(secure.password, str(error), caplog.text)


async def test_plaintext_to_a_tls_port_is_refused(
    secure: SecureProfile, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    error, elapsed = await _refused(secure.url(backend_name, tls=False))
    assert elapsed < FAST
    assert "cannot connect to" in str(error)
    _no_secret(secure.password, str(error), caplog.text)
    # Credentials over plaintext were asked for: warned once, without the password.
    assert "sent over a plaintext connection" in caplog.text


async def test_tls_to_a_plaintext_server_is_refused(
    secure: SecureProfile, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    plain_url, port = PLAINTEXT[backend_name]
    require_broker(backend_name, port)
    scheme, rest = plain_url.split("://", 1)
    tls_scheme = {
        "kafka": "kafka+ssl",
        "amqp": "amqps",
        "redis": "rediss",
        "redis+streams": "rediss+streams",
        "nats": "tls",
        "nats+core": "nats+core+tls",
    }[scheme]
    secret = f"never-sent-{uuid.uuid4().hex}"
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    url = f"{tls_scheme}://someone:{secret}@{rest}"
    error, elapsed = await _refused(url, ssl_cafile=secure.ca, connect_timeout=2)
    assert elapsed < FAST
    _no_secret(secret, str(error), caplog.text)


async def test_connect_errors_stay_within_the_timeout_for_an_unresponsive_broker(
    backend_name: str,
) -> None:
    """A port that accepts connections but never answers: ConnectError after connect_timeout."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    scheme = PLAINTEXT[backend_name][0].split("://", 1)[0]
    url = f"{scheme}://u:silent-secret@127.0.0.1:{port}" + ("/0" if "redis" in scheme else "")
    try:
        error, elapsed = await _refused(url, connect_timeout=0.5)
    finally:
        server.close()
    assert elapsed < 2.0
    assert "silent-secret" not in str(error)


def test_dispytch_run_with_a_wrong_password_exits_2_in_one_line(
    secure: SecureProfile, backend_name: str, tmp_path: Path
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    (tmp_path / "svc.py").write_text(
        "from dispytch import App, Event\n"
        f"app = App(ssl_cafile={secure.ca!r})\n"
        "@app.handler(topic='t', event='e')\n"
        "async def handle(event: Event) -> None: pass\n"
    )
    env = {**os.environ, "DISPYTCH_BROKER_URL": secure.url(backend_name, password=wrong)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "dispytch", "run", "svc:app", "--log-level", "DEBUG"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert wrong not in output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "authentication failed" in errors[0], output
    assert elapsed < 15  # interpreter start-up and imports included
