"""The HTTP endpoints of ``dispytch run --http HOST:PORT``: health probes and metrics.

* ``GET /healthz``: liveness. Answered by the app's own event loop, so a reply means the
  process runs and its loop is responsive; a blocked loop makes the probe time out.
* ``GET /readyz``: readiness, from :meth:`App.health() <dispytch.app.App.health>`: 200 when the
  app is started, its listener runs and is subscribed, the broker answers, and messages get
  settled when there is work; 503 with the reason otherwise. The body is the health snapshot
  as JSON.
* ``GET /metrics``: the Prometheus text format of the app's
  :class:`~dispytch.prometheus.PrometheusMiddleware` registry (404 without
  ``dispytch[prometheus]``).

A small HTTP/1.1 server on asyncio streams, no dependency: one request per connection,
bounded request size, read timeout and number of connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from dispytch.errors import ConfigurationError

if TYPE_CHECKING:
    from dispytch.app import App

__all__ = ["ProbeServer", "parse_address"]

logger = logging.getLogger("dispytch.probes")

#: Largest request head (request line and headers) read, in bytes.
MAX_HEAD = 8192
#: Seconds a client gets to send its request.
READ_TIMEOUT = 5.0
#: Connections served at once; more wait in the kernel's backlog.
MAX_CONNECTIONS = 32

#: status, content type, body
Response = tuple[int, str, bytes]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS.update({408: "Request Timeout", 503: "Service Unavailable"})


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9000`` for IPv6, ``:9000`` for every interface) as a pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(
            f"--http expects HOST:PORT, like 0.0.0.0:9000 or 127.0.0.1:0 (0: any free port); "
            f"got {text!r}"
        )
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


class ProbeServer:
    """Serves ``/healthz``, ``/readyz`` and ``/metrics`` for ``app`` on ``host:port``."""

    def __init__(self, app: App, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen; ``port`` 0 picks a free one (``self.port`` then says which)."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_HEAD
            )
        except OSError as exc:
            raise ConfigurationError(
                f"--http {self.host}:{self.port}: cannot listen there ({exc.strerror or exc}); "
                "pick a free port or another address"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._slots:
            try:
                method, (status, content_type, body) = await self._answer(reader)
                head = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                    f"Content-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n"
                    "Cache-Control: no-store\r\n"
                    "Connection: close\r\n\r\n"
                )
                writer.write(head.encode("ascii") + (body if method != b"HEAD" else b""))
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[bytes, Response]:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return b"", _text(408, "request not received in time\n")
        except asyncio.LimitOverrunError:
            return b"", _text(400, "request head too large\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise
            return b"", _text(400, "incomplete request\n")
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return b"", _text(400, "malformed request line\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return method, _text(405, "use GET\n")
        return method, self._route(target)

    def _route(self, target: bytes) -> Response:
        if target == b"/healthz":
            return _json(200, {"status": "ok"})
        if target == b"/readyz":
            health = self.app.health()
            data: dict[str, Any] = {"status": "ok" if health.ready else "not ready"}
            data.update(health.to_dict())
            return _json(200 if health.ready else 503, data)
        if target == b"/metrics":
            return self._metrics()
        return _text(404, "not found: try /healthz, /readyz or /metrics\n")

    def _metrics(self) -> Response:
        try:
            from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

            from dispytch.prometheus import PrometheusMiddleware
        except ImportError:
            return _text(404, 'no metrics: pip install "dispytch[prometheus]"\n')
        registry = next(
            (
                m.registry
                for m in self.app.middleware
                if isinstance(m, PrometheusMiddleware) and m.registry is not None
            ),
            REGISTRY,
        )
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)


def _text(status: int, text: str) -> Response:
    return status, "text/plain; charset=utf-8", text.encode()


def _json(status: int, data: dict[str, Any]) -> Response:
    return status, "application/json", json.dumps(data).encode() + b"\n"
