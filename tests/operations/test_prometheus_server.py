"""A real Prometheus (Debian's ``prometheus``; ``scripts/brokers.sh tools`` installs it) scrapes a
running ``dispytch run --http`` service on Redis Streams; the handled counter and the histogram
count it stored match what each handler handled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dispytch import App, EventBase
from tests.conformance.conftest import BACKENDS, _delete_redis_keys
from tests.helpers import require_broker
from tests.operations.support import Service, free_ports, get, poll

SERVICE = """
import os
from dispytch import App, Event

app = App(os.environ["OPS_URL"], group=os.environ["OPS_GROUP"])
topic = os.environ["OPS_TOPIC"]

@app.handler(topic=topic, event="placed")
async def bill(event: Event[dict]) -> None:
    print("HANDLED bill", flush=True)

@app.handler(topic=topic, event="placed")
async def audit(event: Event[dict]) -> None:
    print("HANDLED audit", flush=True)

@app.handler(topic=topic, event="cancelled")
async def refund(event: Event[dict]) -> None:
    print("HANDLED refund", flush=True)
"""


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail("Prometheus is not installed; run: sudo bash scripts/brokers.sh tools")
    return found


class Prometheus:
    """A Prometheus server of this test's own: a free port, a data dir under ``tmp_path``."""

    def __init__(self, binary: str, directory: Path, target: str) -> None:
        self.port = free_ports(1)
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: dispytch\n"
            "    static_configs:\n"
            f"      - targets: [{json.dumps(target)}]\n"
        )
        self.log = directory / "prometheus.log"
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, _, body = get(f"{self.url}/api/v1/query?query={urllib.parse.quote(promql)}")
        if status != 200:
            return []
        data = json.loads(body)
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def by_label(self, promql: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(promql)}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def test_prometheus_scrapes_what_each_handler_handled(
    prometheus_binary: str, tmp_path: Path
) -> None:
    backend = BACKENDS["redis_streams"]
    require_broker(backend.name, 6379)
    uid = os.urandom(5).hex()
    topic = f"ops_{uid}"
    env = {**os.environ, "OPS_URL": backend.url, "OPS_GROUP": f"ops_{uid}", "OPS_TOPIC": topic}
    http_port = free_ports(1)
    service = Service(tmp_path, SERVICE, "--http", f"127.0.0.1:{http_port}", env=env)
    (tmp_path / "prometheus").mkdir()
    prometheus = Prometheus(prometheus_binary, tmp_path / "prometheus", f"127.0.0.1:{http_port}")
    placed = type("Placed", (EventBase,), {"__topic__": topic, "__event_type__": "placed"})
    cancelled = type("Cancelled", (EventBase,), {"__topic__": topic, "__event_type__": "cancelled"})
    try:
        service.wait_for("listening as group")
        poll(
            lambda: prometheus.by_label('up{job="dispytch"}', "job") == {"dispytch": 1.0},
            "Prometheus scraping the service",
            timeout=60,
        )
        emitter = App(backend.url, group=f"ops_{uid}_emitter")
        async with emitter:
            await emitter.emit_many(
                [placed() for _ in range(30)] + [cancelled() for _ in range(20)]
            )
        service.wait_for("HANDLED", count=80)
        handled = Counter(line.split()[1] for line in service.lines if line.startswith("HANDLED"))
        assert handled == {"bill": 30, "audit": 30, "refund": 20}
        expected = {name: float(count) for name, count in handled.items()}
        poll(
            lambda: prometheus.by_label("dispytch_handled_total", "handler") == expected,
            "the handled counters in Prometheus",
            timeout=60,
        )
        poll(
            lambda: prometheus.by_label("dispytch_handling_seconds_count", "handler") == expected,
            "the histogram counts in Prometheus",
        )
        # one series per handler, labelled with its pattern and event type, never a topic
        series = prometheus.query("dispytch_handled_total")
        assert {(s["metric"]["handler"], s["metric"]["event_type"]) for s in series} == {
            ("bill", "placed"),
            ("audit", "placed"),
            ("refund", "cancelled"),
        }
        assert {s["metric"]["pattern"] for s in series} == {topic}
        buckets = prometheus.by_label('dispytch_handling_seconds_bucket{le="+Inf"}', "handler")
        assert buckets == expected
        assert prometheus.by_label("dispytch_messages_received_total", "job") == {"dispytch": 50.0}
        assert prometheus.by_label("dispytch_broker_connected", "job") == {"dispytch": 1.0}
    finally:
        prometheus.stop()
        assert service.stop() == 0, service.output
        await _delete_redis_keys(backend.url, uid)
