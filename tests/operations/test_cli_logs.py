"""``dispytch run`` logging as an operator sees it: JSON lines with the per-event fields, and a
``--log-config`` file that decides alone."""

from __future__ import annotations

import json
from pathlib import Path

from tests.operations.support import Service

SERVICE = """
import asyncio, json
from dispytch import App, Event

app = App("memory://", group="logged")

@app.handler(topic="pings", event="ping")
async def pong(event: Event[dict]) -> None:
    print("HANDLED", event.id, flush=True)

@app.on_startup
def publish() -> None:
    for event_id, kind in [("id-0", "ping"), ("id-1", "ping"), ("evil\\nid", "other")]:
        envelope = {"id": event_id, "type": kind, "body": {}, "timestamp": 1}
        app.backend.broker.publish("pings", json.dumps(envelope).encode())
    # two handled; no handler for the third, whose id tries to forge a log line
"""


def test_json_logs_one_object_per_line_with_the_event_fields(tmp_path: Path) -> None:
    service = Service(tmp_path, SERVICE, "--log-format", "json", "--log-level", "debug")
    try:
        service.wait_for(r'"outcome":"no_handler"')
        service.wait_for(r'"outcome":"handled"', count=2)
    finally:
        assert service.stop() == 0, service.output
    records = [json.loads(line) for line in service.lines if line.startswith("{")]
    others = [line for line in service.lines if not line.startswith("{")]
    assert others == ["HANDLED id-0", "HANDLED id-1"], others  # nothing else, no broken line
    events = [r for r in records if r["logger"] == "dispytch.events"]
    assert len(events) == 3
    handled = [e for e in events if e["outcome"] == "handled"]
    assert {e["event_id"] for e in handled} == {"id-0", "id-1"}
    for event in handled:
        assert event["level"] == "DEBUG" and event["topic"] == "pings"
        assert event["handler"] == "pong" and isinstance(event["duration_ms"], float)
    (forged,) = [e for e in events if e["outcome"] == "no_handler"]
    assert forged["event_id"] == "evil\\nid"  # escaped before it reached the record
    assert any(r["message"].startswith("listening as group") for r in records)


def test_log_config_file_decides_alone(tmp_path: Path) -> None:
    out = tmp_path / "service.log"
    config = {
        "version": 1,
        "formatters": {"mine": {"format": "MINE %(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "mine"}
        },
        "loggers": {"dispytch.events": {"level": "DEBUG"}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    (tmp_path / "logging.json").write_text(json.dumps(config))
    service = Service(tmp_path, SERVICE, "--log-config", "logging.json")
    try:
        service.wait_for("HANDLED id-1")
        service.stop()
    finally:
        service.stop()
    text = out.read_text()
    assert "MINE INFO dispytch.app listening as group 'logged' on pings" in text
    assert "MINE DEBUG dispytch.events handled event id-0 (ping) from pings by pong" in text
    # nothing of dispytch's own format on the console
    assert [line for line in service.lines if "dispytch" in line] == []
