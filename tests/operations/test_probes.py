"""The probe server: /healthz, /readyz, /metrics in process, and ``dispytch run --http`` (one
worker and several, one port each)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from dispytch import App, ConfigurationError
from dispytch.probes import ProbeServer, parse_address
from tests.helpers import wait_until
from tests.operations.support import Service, free_ports, get, get_json, poll
from tests.unit.support import Placed
from tests.unit.test_prometheus import gated_app


async def fetch(url: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(get, url)


async def raw(server: ProbeServer, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address(":9100") == ("0.0.0.0", 9100)
    for bad in ("9000", "host:", "host:http", "h:70000"):
        with pytest.raises(ConfigurationError, match="HOST:PORT"):
            parse_address(bad)


async def test_endpoints_answer_from_the_app() -> None:
    app, _, gate, _ = gated_app(stall_timeout=0.2)

    server = ProbeServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        status, kind, body = await fetch(server.url + "/healthz")
        assert (status, kind, json.loads(body)) == (200, "application/json", {"status": "ok"})
        status, _, body = await fetch(server.url + "/readyz")
        assert status == 503 and json.loads(body)["reason"] == "not started"
        async with app:
            status, _, body = await fetch(server.url + "/readyz")
            assert status == 200, body
            ready = json.loads(body)
            assert ready["status"] == "ok" and ready["subscribed"] and ready["listening"]
            await app.emit(Placed(n=1))
            await wait_until(lambda: app.health().in_flight == 1, what="held")
            # the handler does not finish: past stall_timeout the app is not ready
            await wait_until(lambda: not app.health().ready, timeout=5, what="stalled")
            status, _, body = await fetch(server.url + "/readyz")
            assert status == 503 and "no message settled" in json.loads(body)["reason"]
            gate.set()
            await wait_until(lambda: app.health().ready, what="ready again")
            status, kind, body = await fetch(server.url + "/metrics")
            assert status == 200 and kind.startswith("text/plain")
            assert 'dispytch_handled_total{event_type="placed"' in body
            assert "dispytch_messages_in_flight 0.0" in body
        status, _, _ = await fetch(server.url + "/nowhere")
        assert status == 404
    finally:
        await server.close()


async def test_malformed_and_other_requests() -> None:
    app = App("memory://")
    server = ProbeServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        assert (await raw(server, b"POST /readyz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
        assert (await raw(server, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        head = await raw(server, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # no body
        huge = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await raw(server, huge)).startswith(b"HTTP/1.1 400 ")
        assert (await raw(server, b"GET /healthz?probe=1 HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 200 "
        )
    finally:
        await server.close()


async def test_a_port_in_use_is_a_configuration_error() -> None:
    app = App("memory://")
    first = ProbeServer(app, "127.0.0.1", 0)
    await first.start()
    try:
        with pytest.raises(ConfigurationError, match="cannot listen"):
            await ProbeServer(app, "127.0.0.1", first.port).start()
    finally:
        await first.close()


SERVICE = """
import asyncio
from dispytch import App, Event, EventBase

app = App("memory://", group="probed")

class Ping(EventBase):
    __topic__ = "pings"
    __event_type__ = "ping"
    n: int

@app.handler(topic="pings", event="ping")
async def pong(event: Event[dict]) -> None:
    pass

tasks = []

@app.on_startup
async def emit() -> None:
    async def later() -> None:
        await app.emit_many(Ping(n=i) for i in range(5))
    tasks.append(asyncio.get_running_loop().create_task(later()))
"""


def test_dispytch_run_http_serves_probes_and_metrics(tmp_path: Path) -> None:
    service = Service(tmp_path, SERVICE, "--http", "127.0.0.1:0")
    try:
        (url,) = service.urls()
        assert get_json(url + "/healthz") == (200, {"status": "ok"})
        poll(lambda: get_json(url + "/readyz")[0] == 200, "ready")
        _, ready = get_json(url + "/readyz")
        assert ready["subscribed"] and ready["listening"] and ready["reason"] is None
        # --http added the Prometheus middleware: the five pings are counted
        counted = 'dispytch_handled_total{event_type="ping",handler="pong",pattern="pings"} 5.0'
        poll(lambda: counted in get(url + "/metrics")[2], "five pings counted")
    finally:
        assert service.stop() == 0, service.output


def test_each_worker_serves_on_its_own_port(tmp_path: Path) -> None:
    base = free_ports(2)
    service = Service(tmp_path, SERVICE, "--workers", "2", "--http", f"127.0.0.1:{base}")
    try:
        urls = sorted(service.urls(count=2))
        assert urls == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
        for url in urls:
            assert get_json(url + "/healthz") == (200, {"status": "ok"})
    finally:
        assert service.stop() == 0, service.output
