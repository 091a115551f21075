"""dispytch.fastapi: lifespan, emitter dependency, health and AsyncAPI routes; and the example
service run for real with uvicorn, driven over HTTP with httpx (memory and Redis Streams)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dispytch import App, ConfigurationError, Event, EventBase
from dispytch.fastapi import DispytchApp, Emitter, health, lifespan, routes
from tests.helpers import require_broker

ROOT = Path(__file__).resolve().parents[2]


class Ping(EventBase):
    __topic__ = "pings"
    __event_type__ = "ping"
    n: int


def _service() -> tuple[App, FastAPI, list[int]]:
    events = App("memory://", group="web")
    seen: list[int] = []

    @events.handler(topic="pings", event="ping")
    async def on_ping(event: Event[Ping]) -> None:
        seen.append(event.body.n)

    api = FastAPI(lifespan=lifespan(events))
    api.include_router(routes(events))

    @api.post("/ping/{n}")
    async def ping(n: int, emitter: Emitter) -> dict[str, int]:
        await emitter.emit(Ping(n=n))
        return {"n": n}

    @api.get("/group")
    async def group(app: DispytchApp) -> str:
        return app.group

    return events, api, seen


def test_lifespan_starts_and_stops_the_app_and_the_emitter_dependency_emits() -> None:
    events, api, seen = _service()
    ready, details = health(events)
    assert (ready, details["status"], details["started"]) == (False, "not started", False)
    with TestClient(api) as client:
        answer = client.get("/healthz").json()
        assert answer["status"] == "ok"
        assert (answer["ready"], answer["listening"], answer["subscribed"]) == (True, True, True)
        assert client.post("/ping/7").json() == {"n": 7}
        assert client.get("/group").json() == "web"
        deadline = time.monotonic() + 10
        while seen != [7]:
            assert time.monotonic() < deadline, seen
            time.sleep(0.01)
        page = client.get("/asyncapi")
        assert 'data-json="/asyncapi.json"' in page.text
        assert client.get("/asyncapi.json").json()["channels"]["pings"]["address"] == "pings"
        assert client.get("/asyncapi.yaml").text.startswith("asyncapi:")
    assert events.listener is None  # stopped with the server
    assert health(events)[0] is False


def test_health_is_503_when_the_listener_stopped() -> None:
    events, api, _ = _service()

    @api.post("/stop-listener")
    async def stop_listener() -> None:
        assert events.listener is not None
        events.listener.stop()

    with TestClient(api) as client:
        assert client.get("/healthz").status_code == 200
        client.post("/stop-listener")
        deadline = time.monotonic() + 10
        while client.get("/healthz").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        answer = client.get("/healthz").json()
        assert (answer["status"], answer["ready"]) == ("the listener stopped", False)


def test_inner_lifespan_runs_while_the_app_is_started() -> None:
    events, _, _ = _service()
    order: list[str] = []

    @asynccontextmanager
    async def mine(web: FastAPI) -> AsyncIterator[dict[str, str]]:
        await events.emit(Ping(n=1))  # the App is started already
        order.append("inner up")
        yield {"db": "connected"}
        order.append("inner down")
        assert events.listener is not None  # still running while the inner one stops

    api = FastAPI(lifespan=lifespan(events, inner=mine))

    @api.get("/state")
    async def state(emitter: Emitter) -> str:
        return "ok"

    with TestClient(api) as client:
        assert client.get("/state").json() == "ok"
    assert order == ["inner up", "inner down"]


def test_emitter_without_the_lifespan_says_how_to_fix_it() -> None:
    api = FastAPI()

    @api.get("/x")
    async def x(emitter: Emitter) -> str:
        return "unreachable"

    with TestClient(api) as client, pytest.raises(ConfigurationError, match="lifespan"):
        client.get("/x")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def uvicorn_service(request: pytest.FixtureRequest) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    url = request.param
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "fastapi_service:api",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--app-dir",
            str(ROOT / "examples"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "DISPYTCH_BROKER_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not become healthy"
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _drive(base: str, proc: subprocess.Popen[str]) -> None:
    created = httpx.post(base + "/orders", json={"item": "book", "quantity": 2}, timeout=10)
    assert created.status_code == 202
    order_id = created.json()["order_id"]
    deadline = time.monotonic() + 30
    while (got := httpx.get(f"{base}/orders/{order_id}", timeout=5)).status_code == 404:
        assert time.monotonic() < deadline, "the handler never saw the order"
        time.sleep(0.05)
    assert got.json() == {
        "id": got.json()["id"],
        "order_id": order_id,
        "item": "book",
        "quantity": 2,
    }
    doc = httpx.get(base + "/asyncapi.json", timeout=5).json()
    assert {op["action"] for op in doc["operations"].values()} == {"send", "receive"}
    assert "<title>Orders 1.0.0 - AsyncAPI</title>" in httpx.get(base + "/asyncapi", timeout=5).text
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    # uvicorn re-raises the SIGTERM after its graceful shutdown.
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out


@pytest.mark.parametrize("uvicorn_service", ["memory://orders"], indirect=True)
def test_example_service_with_uvicorn_on_memory(
    uvicorn_service: tuple[str, subprocess.Popen[str]],
) -> None:
    _drive(*uvicorn_service)


@pytest.fixture
def _redis_streams() -> None:
    require_broker("redis_streams", 6379)


@pytest.mark.broker("redis_streams")
@pytest.mark.parametrize("uvicorn_service", ["redis+streams://127.0.0.1:6379/0"], indirect=True)
def test_example_service_with_uvicorn_on_redis_streams(
    _redis_streams: None, uvicorn_service: tuple[str, subprocess.Popen[str]]
) -> None:
    _drive(*uvicorn_service)
