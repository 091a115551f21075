"""Secrets never shown: every URL form through redact(), App's repr, the start log, the
ConfigurationError paths and ``dispytch run`` (a subprocess); everything captured is grepped."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispytch import App
from dispytch.errors import ConfigurationError, ConnectError
from dispytch.redaction import redact, redact_url, secrets_of

SECRET = "S3cr3t-Value"

#: (URL, what redact() makes of it): every form a secret takes in a broker URL.
FORMS = [
    (f"kafka://user:{SECRET}@h1:9092,h2:9092", "kafka://user:***@h1:9092,h2:9092"),
    (f"kafka+ssl://user:{SECRET}@h1:9093?sasl_mechanism=SCRAM-SHA-512", None),
    (f"nats://{SECRET}@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
    (f"tls://user:{SECRET}@127.0.0.1:4222", "tls://user:***@127.0.0.1:4222"),
    (f"nats://a:{SECRET}@h1:4222,nats://b:{SECRET}@h2:4222", None),
    (f"redis://127.0.0.1:6379/0?password={SECRET}", "redis://127.0.0.1:6379/0?password=***"),
    (f"rediss://:{SECRET}@127.0.0.1:6379/0", "rediss://:***@127.0.0.1:6379/0"),
    (f"amqps://u:{SECRET}@h/v?keyfile_password={SECRET}&cafile=/ca.pem", None),
    (f"kafka://h:9092?sasl_plain_password={SECRET}", "kafka://h:9092?sasl_plain_password=***"),
    (f"redis+streams://h/0?ssl_password={SECRET}&socket_timeout=3", None),
    (f"amqp://u:{SECRET.replace('-', '%2D')}@h/", "amqp://u:***@h/"),
    (f"nats+core://u:{SECRET}@[::1]:4222", "nats+core://u:***@[::1]:4222"),
    (f"kafka://u:{SECRET}@h1:notaport,h2", "kafka://u:***@h1:notaport,h2"),
]


@pytest.mark.parametrize(("url", "expected"), FORMS)
def test_redact_every_url_form(url: str, expected: str | None) -> None:
    shown = redact_url(url) if "://" in url.split(",nats://")[0] else url
    assert SECRET not in redact(url)
    assert SECRET not in shown.replace("%2D", "-") or "%2D" not in url
    if expected is not None:
        assert redact(url) == expected
    assert "%2D" not in redact(url)


def test_secrets_are_found_in_urls_and_options() -> None:
    found = secrets_of(
        f"amqps://u:{SECRET}@h/?keyfile_password=kp", {"ssl_password": "sp", "timeout": "3"}
    )
    assert {SECRET, "kp", "sp"} <= found
    assert "3" not in found
    text = f"client said: login {SECRET} refused (kp, sp)"
    assert redact(text, found) == "client said: login *** refused (***, ***)"


@pytest.mark.parametrize(("url", "expected"), FORMS[:10])
def test_app_repr_and_start_log_never_show_the_secret(
    url: str, expected: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    try:
        app = App(url, connect_timeout=0.2)
    except ConfigurationError as exc:  # a URL the backend refuses: its error is checked
        assert SECRET not in str(exc)
        return
    assert SECRET not in repr(app)
    assert SECRET not in repr(app.backend)
    logging.getLogger("dispytch.app").info("starting %r", app)
    assert "Logging error" not in caplog.text
    assert SECRET not in caplog.text


def test_unknown_scheme_error_is_redacted() -> None:
    with pytest.raises(ConfigurationError) as caught:
        App(f"nosuch://user:{SECRET}@host?token={SECRET}")
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"kafka://user:{SECRET}@127.0.0.1:1",
        f"amqp://user:{SECRET}@127.0.0.1:1/",
        f"redis://:{SECRET}@127.0.0.1:1/0",
        f"redis+streams://127.0.0.1:1/0?password={SECRET}",
        f"nats://{SECRET}@127.0.0.1:1",
        f"nats+core://u:{SECRET}@127.0.0.1:1",
    ],
)
async def test_connect_errors_never_show_the_secret(
    url: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    app = App(url, connect_timeout=1)
    with pytest.raises(ConnectError) as caught:
        await app.start()
    await app.backend.close()
    assert "127.0.0.1:1" in str(caught.value)
    out = capsys.readouterr()
    for text in (str(caught.value), repr(caught.value), caplog.text, out.out, out.err):
        assert SECRET not in text


def _write_app(tmp_path: Path) -> None:
    (tmp_path / "svc.py").write_text(
        "from dispytch import App, Event\n"
        "app = App()\n"
        "@app.handler(topic='t', event='e')\n"
        "async def handle(event: Event) -> None: pass\n"
    )


def _run_cli(
    tmp_path: Path, url: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "DISPYTCH_BROKER_URL": url, "DISPYTCH_LOG_LEVEL": "DEBUG"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "dispytch", "run", "svc:app", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - started


@pytest.mark.parametrize(
    ("url", "broker"),
    [
        (f"kafka://user:{SECRET}@127.0.0.1:1", "Kafka"),
        (f"amqp://user:{SECRET}@127.0.0.1:1/", "RabbitMQ"),
        (f"redis://:{SECRET}@127.0.0.1:1/0", "Redis"),
        (f"redis+streams://:{SECRET}@127.0.0.1:1/0", "Redis"),
        (f"nats://{SECRET}@127.0.0.1:1", "NATS"),
        (f"nats+core://u:{SECRET}@127.0.0.1:1", "NATS"),
    ],
)
def test_dispytch_run_reports_an_unreachable_broker_in_one_line(
    tmp_path: Path, url: str, broker: str
) -> None:
    _write_app(tmp_path)
    done, elapsed = _run_cli(tmp_path, url)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert SECRET not in output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output
    assert f"cannot connect to {broker} at" in errors[0]
    assert "127.0.0.1:1" in errors[0]
    assert "Traceback" not in output
    # Python start-up and imports included; the connect itself fails at once here.
    assert elapsed < 15


def test_dispytch_run_reports_a_bad_url_without_the_secret(tmp_path: Path) -> None:
    _write_app(tmp_path)
    done, _ = _run_cli(tmp_path, f"kafka://u:{SECRET}@h1:9092?security_protocol=SSL")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert SECRET not in output
    assert "unknown query parameter 'security_protocol'" in output
