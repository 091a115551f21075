"""``dispytch docs serve``: the AsyncAPI page of an App over HTTP (standard library only)."""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from dispytch.asyncapi.asgi import AsyncAPIDocs
from dispytch.untrusted import loggable

if TYPE_CHECKING:
    from dispytch.app import App

__all__ = ["docs_server"]

logger = logging.getLogger("dispytch.docs")


def docs_server(
    app: App, host: str = "127.0.0.1", port: int = 8000, **options: Any
) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server for ``app``'s AsyncAPI page; ``port=0`` picks one.

    Call ``serve_forever()`` on it, and ``shutdown()`` / ``server_close()`` to stop.
    """
    docs = AsyncAPIDocs(app, **options)
    _ = docs.document  # build it now: a broken app fails here, not at the first request

    class Handler(BaseHTTPRequestHandler):
        server_version = "dispytch-docs"

        def do_GET(self) -> None:
            status, ctype, body = docs.response(self.path.split("?", 1)[0])
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # The request line is the client's text: one escaped, bounded line.
            logger.debug("%s %s", self.address_string(), loggable(format % args))

    return ThreadingHTTPServer((host, port), Handler)
