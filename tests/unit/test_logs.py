"""Logging: the per-event DEBUG line (and its zero cost when off), the JSON formatter, and
configure_logging from --log-level/--log-format/--log-config."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispytch import App, ConfigurationError, Event
from dispytch.cli import main
from dispytch.logs import EVENT_LOGGER, EventLog, JSONFormatter, configure_logging
from dispytch.testing import TestClient
from tests.unit.support import Body, Placed


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes the root logger: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def record(message: str = "hello", *args: Any, **extra: Any) -> logging.LogRecord:
    out = logging.LogRecord("dispytch.test", logging.INFO, __file__, 1, message, args, None)
    out.__dict__.update(extra)
    return out


def test_json_formatter_writes_one_escaped_object_per_line() -> None:
    formatter = JSONFormatter()
    line = formatter.format(
        record("topic %s", "evil\ntopic\u2028x", event_id="e-1", duration_ms=1.5)
    )
    assert "\n" not in line and "\u2028" not in line
    data = json.loads(line)
    assert data["message"] == "topic evil\ntopic\u2028x"
    assert (data["level"], data["logger"], data["event_id"], data["duration_ms"]) == (
        "INFO",
        "dispytch.test",
        "e-1",
        1.5,
    )
    assert data["time"].endswith("Z") and "T" in data["time"]


def test_json_formatter_keeps_the_exception_on_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JSONFormatter().format(failed)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


async def test_one_debug_line_per_settled_event_with_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("memory://")

    @app.handler(topic="orders", event="placed")
    async def place(event: Event[Body]) -> None: ...

    with caplog.at_level(logging.DEBUG, logger=EVENT_LOGGER):
        async with TestClient(app) as client:
            await client.emit(Placed(n=1))
            await client.publish_raw("orders\nforged line", b'{"id":"x\\ny","type":"t","body":{}}')
            await client.wait_idle()
    lines = [r for r in caplog.records if r.name == EVENT_LOGGER]
    handled = [r for r in lines if r.__dict__["outcome"] == "handled"]
    assert len(handled) == 1
    (line,) = handled
    assert line.levelno == logging.DEBUG
    assert line.__dict__["topic"] == "orders" and line.__dict__["handler"].endswith("place")
    assert isinstance(line.__dict__["duration_ms"], float)
    assert line.__dict__["event_id"] and line.getMessage().startswith("handled event ")
    # off the wire, escaped: no forged second line
    other = [r for r in lines if r.__dict__["outcome"] != "handled"]
    assert all("\n" not in r.getMessage() for r in other)


async def test_no_event_log_middleware_unless_debug_is_on_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("memory://")

    @app.handler(topic="orders", event="placed")
    async def place(event: Event[Body]) -> None: ...

    with caplog.at_level(logging.INFO, logger=EVENT_LOGGER):
        async with app:
            assert app.listener is not None
            assert not any(isinstance(m, EventLog) for m in app.listener.middleware)
    with caplog.at_level(logging.DEBUG, logger=EVENT_LOGGER):
        async with app:
            assert app.listener is not None
            assert any(isinstance(m, EventLog) for m in app.listener.middleware)
    assert not any(isinstance(m, EventLog) for m in app.middleware)  # the app's list untouched


def test_configure_logging_text_and_json(restore_logging: None) -> None:
    configure_logging("warning", "json")
    root = logging.getLogger()
    assert root.level == logging.WARNING
    assert isinstance(root.handlers[-1].formatter, JSONFormatter)
    configure_logging(None, "text")
    assert root.level == logging.INFO and len(root.handlers) == 1
    with pytest.raises(ConfigurationError, match="DEBUG, INFO"):
        configure_logging("loud")


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".ini"])
def test_log_config_files_are_applied(tmp_path: Path, suffix: str, restore_logging: None) -> None:
    out = tmp_path / "app.log"
    if suffix == ".ini":
        text = f"""
[loggers]
keys=root
[handlers]
keys=file
[formatters]
keys=plain
[logger_root]
level=WARNING
handlers=file
[handler_file]
class=FileHandler
formatter=plain
args=({str(out)!r},)
[formatter_plain]
format=MINE %(name)s %(message)s
"""
    else:
        config = {
            "version": 1,
            "formatters": {"plain": {"format": "MINE %(name)s %(message)s"}},
            "handlers": {
                "file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "plain"}
            },
            "root": {"level": "WARNING", "handlers": ["file"]},
        }
        if suffix == ".json":
            text = json.dumps(config)
        else:
            import yaml

            text = yaml.safe_dump(config)
    path = tmp_path / f"logging{suffix}"
    path.write_text(text)
    existing = logging.getLogger("dispytch.app")
    configure_logging(config_file=path)
    existing.warning("kept working")
    logging.getLogger("other").info("below the level")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert out.read_text() == "MINE dispytch.app kept working\n"


def test_bad_log_config_files_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no such file"):
        configure_logging(config_file=tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigurationError, match="dictConfig mapping"):
        configure_logging(config_file=tmp_path / "list.json")
    (tmp_path / "bad.json").write_text('{"version": 1, "handlers": {"h": {"class": "nope.Nope"}}}')
    with pytest.raises(ConfigurationError, match="could not be applied"):
        configure_logging(config_file=tmp_path / "bad.json")


def test_cli_log_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "svc:app", "--log-level", "loud"])
    assert exit_info.value.code == 2
    assert "DEBUG" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "svc:app", "--log-config", "x.json", "--log-format", "json"])
    assert exit_info.value.code == 2
    assert "--log-config sets levels and formats" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = capsys.readouterr().out
    for words in ("--log-format {text,json}", "--log-config FILE", "--http HOST:PORT", "CRITICAL"):
        assert words in help_text, words


def test_cli_bad_http_address_exits_2(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "svc:app", "--http", "nowhere"])
    assert exit_info.value.code == 2
    assert "HOST:PORT" in capsys.readouterr().err
