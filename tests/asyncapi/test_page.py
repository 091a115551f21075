"""The AsyncAPI page, rendered by a real browser (headless Chromium), served by
``dispytch docs serve`` and mounted in an ASGI app."""

from __future__ import annotations

import logging
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from dispytch.asyncapi import asyncapi
from dispytch.asyncapi.asgi import asyncapi_asgi
from dispytch.asyncapi.page import render_html
from dispytch.asyncapi.serve import docs_server
from tests.asyncapi.everything import build
from tests.asyncapi.tools import ROOT, run_chromium

ARTEFACTS = Path(os.environ.get("DISPYTCH_TEST_ARTEFACTS", "/tmp/dispytch-test-artefacts"))


class _Dom(HTMLParser):
    """Texts and attributes of the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.fields: set[str] = set()
        self.parameters: set[str] = set()
        self.text: list[str] = []
        self.body: dict[str, str | None] = {}
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if found.get("data-field"):
            self.fields.add(str(found["data-field"]))
        if found.get("data-parameter"):
            self.parameters.add(str(found["data-parameter"]))
        if tag == "body":
            self.body = found
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def _serve(target: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispytch", "docs", "serve", target, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            match = re.search(r"at (http://\S+)", line)
            if match:
                return proc, match.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"docs serve did not start: {proc.stderr.read() if proc.stderr else ''}")


def _schema_fields(schema: object, out: set[str]) -> None:
    if isinstance(schema, dict):
        out.update(schema.get("properties", {}))
        for value in schema.values():
            _schema_fields(value, out)
    elif isinstance(schema, list):
        for value in schema:
            _schema_fields(value, out)


def test_docs_serve_page_renders_every_channel_message_and_field_in_chromium() -> None:
    doc = asyncapi(build())
    proc, url = _serve("tests.asyncapi.everything:app")
    try:
        dom_html = run_chromium(url, "--dump-dom")
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTEFACTS / "asyncapi-page.png"
        shot.unlink(missing_ok=True)
        run_chromium(url, f"--screenshot={shot}", "--window-size=1280,4000")
        assert shot.stat().st_size > 10_000
        print(f"AsyncAPI page screenshot: {shot}")
        yaml_text = httpx.get(url + "asyncapi.yaml", timeout=10).text
        assert yaml_text.startswith('asyncapi: "3.0.0"\n')
        assert httpx.get(url + "asyncapi.json", timeout=10).json() == doc
        assert httpx.get(url + "nope", timeout=10).status_code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    dom = _Dom()
    dom.feed(dom_html)
    text = " ".join(dom.text)
    assert dom.body.get("data-rendered") == "true", "the page script did not finish"
    for channel_id, channel in doc["channels"].items():
        assert f"channel-{channel_id}" in dom.ids
        assert channel["address"] in text
    for key in doc["components"]["messages"]:
        assert f"message-{key}" in dom.ids
    for op_id in doc["operations"]:
        assert f"operation-{op_id}" in dom.ids
    for name in doc["components"]["schemas"]:
        assert f"schema-{name}" in dom.ids
    fields: set[str] = set()
    _schema_fields(doc["components"], fields)
    assert fields and fields <= dom.fields, fields - dom.fields
    assert {"shop_id", "region"} <= dom.parameters
    assert "integer > 0 <= 9999" in text  # the TopicSegment constraints of {shop_id}
    assert "A user signed up." in text


def test_page_shows_hostile_text_as_text() -> None:
    doc = asyncapi(build())
    doc["info"]["title"] = "</script><img src=x onerror=alert(1)>"
    doc["components"]["schemas"]["Address"]["properties"]["<b>bold</b>"] = {"type": "string"}
    page = render_html(doc)
    assert "</script><img" not in page
    dom = _Dom()
    dom.feed(run_chromium("data:text/html;base64," + _b64(page), "--dump-dom"))
    assert "<b>bold</b>" in dom.fields
    assert "</script><img src=x onerror=alert(1)>" in " ".join(dom.text)
    assert "img" not in {i.split("-")[0] for i in dom.ids}


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


async def test_asyncapi_asgi_mounted_under_a_prefix() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = build()
    web = Starlette(routes=[Mount("/events", app=asyncapi_asgi(app, title="Billing"))])
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        page = await client.get("/events/")
        assert page.status_code == 200
        assert 'data-json="/events/asyncapi.json"' in page.text
        as_json = await client.get("/events/asyncapi.json")
        assert as_json.json() == asyncapi(app, title="Billing")
        assert (await client.get("/events/asyncapi.yaml")).text.startswith("asyncapi:")
        assert (await client.post("/events/")).status_code == 405
        assert (await client.get("/events/other")).status_code == 404


def test_docs_server_logs_the_request_line_escaped(caplog: pytest.LogCaptureFixture) -> None:
    server = docs_server(build(), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="dispytch.docs"):
            with socket.create_connection(server.server_address[:2], timeout=5) as sock:
                sock.sendall(b"GET /\x1b[2Jnope HTTP/1.0\r\n\r\n")
                assert sock.recv(100).startswith(b"HTTP/1.0 404")
            server.shutdown()
    finally:
        server.server_close()
        thread.join(timeout=5)
    lines = [r.getMessage() for r in caplog.records if r.name == "dispytch.docs"]
    assert any("GET /\\x1b[2Jnope" in line for line in lines), lines
    assert not any("\x1b" in line for line in lines)
