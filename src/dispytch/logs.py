"""Logging: one line per handled event, a JSON formatter, and how ``dispytch run`` sets logging up.

* The logger ``dispytch.events`` gets one DEBUG record per message the listener settled, with
  the event id, type, topic, handlers, outcome and duration as record attributes (JSON output
  shows them as fields). It costs nothing unless that logger is enabled for DEBUG when the app
  starts: only then does the app add :class:`EventLog` to its listener.
* :class:`JSONFormatter` writes each record as one JSON object on one line.
* :func:`configure_logging` is what ``dispytch run --log-level/--log-format/--log-config`` do.

Values that came off the wire (topics, ids) are passed through
:func:`dispytch.untrusted.loggable` before they reach a record.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Literal

from dispytch.errors import ConfigurationError
from dispytch.middleware import ConsumeContext, Middleware
from dispytch.untrusted import loggable

__all__ = [
    "EVENT_LOGGER",
    "LEVELS",
    "EventLog",
    "JSONFormatter",
    "configure_logging",
    "event_log_wanted",
]

#: The logger of the per-event lines.
EVENT_LOGGER = "dispytch.events"
#: What ``--log-level`` accepts.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The text format of ``dispytch run``.
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"

_events = logging.getLogger(EVENT_LOGGER)


def event_log_wanted() -> bool:
    """Whether the per-event lines would be written (``dispytch.events`` enabled for DEBUG)."""
    return _events.isEnabledFor(logging.DEBUG)


class EventLog(Middleware):
    """One DEBUG record per settled message on ``dispytch.events``.

    The record's attributes ``event_id``, ``event_type``, ``topic``, ``handler`` (the
    handlers' names, comma-separated), ``outcome`` and ``duration_ms`` carry the details.
    The app adds it by itself when that logger is enabled for DEBUG at start.
    """

    def after_consume(self, context: ConsumeContext) -> None:
        if not _events.isEnabledFor(logging.DEBUG):
            return
        event_id = loggable(context.event_id) if context.event_id is not None else "-"
        event_type = loggable(context.event_type) if context.event_type is not None else "-"
        topic = loggable(context.topic)
        handlers = ",".join(context.handlers)
        duration_ms = round((context.duration or 0.0) * 1000, 3)
        _events.debug(
            "%s event %s (%s) from %s by %s in %.1f ms",
            context.outcome,
            event_id,
            event_type,
            topic,
            handlers or "-",
            duration_ms,
            extra={
                "event_id": event_id,
                "event_type": event_type,
                "topic": topic,
                "handler": handlers,
                "outcome": context.outcome,
                "duration_ms": duration_ms,
            },
        )


#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
#: U+2028 and U+2029 end a line for some readers; JSON allows them raw, so escape them.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029"})


class JSONFormatter(logging.Formatter):
    """Each record as one JSON object on one line: ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``, ``process``, the record's ``extra`` fields (the per-event ones:
    ``event_id``, ``event_type``, ``topic``, ``handler``, ``outcome``, ``duration_ms``) and,
    with an exception, ``exception``. Control characters and line separators are escaped, so
    no value can break the one-line framing."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        data.update(
            (key, value)
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        )
        if record.exc_info:
            data["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        text = json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))
        return text.translate(_LINE_BREAKS)


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(
    level: str | None = None,
    fmt: Literal["text", "json"] = "text",
    config_file: str | os.PathLike[str] | None = None,
) -> None:
    """Set logging up as ``dispytch run`` does.

    With ``config_file``, that file alone decides: a ``.json``, ``.yaml`` or ``.yml`` file is
    a :func:`logging.config.dictConfig` dictionary (YAML needs PyYAML), any other a
    :func:`logging.config.fileConfig` ``.ini`` file; loggers it does not name keep working.
    Otherwise the root logger writes to standard error at ``level`` (default ``INFO``) in
    ``fmt``: ``text`` lines or ``json`` objects, one per line.
    """
    if config_file is not None:
        _from_file(Path(config_file))
        return
    name = (level or "INFO").upper()
    if name not in LEVELS:
        raise ConfigurationError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)


def _from_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigurationError(f"--log-config {str(path)!r}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            config = json.loads(path.read_text(encoding="utf-8"))
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                raise ConfigurationError(
                    f"--log-config {str(path)!r} is YAML, which needs PyYAML: pip install pyyaml "
                    "(or write the same dictionary as JSON)"
                ) from None
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
            return
        if not isinstance(config, dict):
            raise ConfigurationError(
                f"--log-config {str(path)!r} must hold a logging dictConfig mapping "
                f"(with version: 1), not a {type(config).__name__}"
            )
        config.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(config)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"--log-config {str(path)!r} could not be applied: {type(exc).__name__}: {exc}"
        ) from None
