"""The AsyncAPI page of an App as an ASGI application, to mount in an existing web app.

    from dispytch.asyncapi.asgi import asyncapi_asgi
    web.mount("/asyncapi", asyncapi_asgi(app))      # Starlette / FastAPI

serves ``/`` (the page), ``/asyncapi.json`` and ``/asyncapi.yaml`` under the mount path. The
document is built on the first request (after every handler was registered) and kept.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from dispytch.asyncapi.document import asyncapi
from dispytch.asyncapi.page import render_html
from dispytch.asyncapi.yaml import dump_yaml

if TYPE_CHECKING:
    from dispytch.app import App

__all__ = ["AsyncAPIDocs", "asyncapi_asgi"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AsyncAPIDocs:
    """Builds and caches the three representations of an app's AsyncAPI document."""

    def __init__(self, app: App, **options: Any) -> None:
        self.app = app
        self.options = options
        self._document: dict[str, Any] | None = None

    @property
    def document(self) -> dict[str, Any]:
        if self._document is None:
            self._document = asyncapi(self.app, **self.options)
        return self._document

    def json(self) -> bytes:
        return json.dumps(self.document, indent=2, ensure_ascii=False).encode("utf-8")

    def yaml(self) -> bytes:
        return dump_yaml(self.document).encode("utf-8")

    def html(self, json_url: str = "asyncapi.json", yaml_url: str = "asyncapi.yaml") -> bytes:
        return render_html(self.document, json_url=json_url, yaml_url=yaml_url).encode("utf-8")

    def response(self, path: str, prefix: str = "") -> tuple[int, str, bytes]:
        """``(status, content type, body)`` for a path relative to where the docs live."""
        if path in ("", "/", "/index.html"):
            html = self.html(f"{prefix}/asyncapi.json", f"{prefix}/asyncapi.yaml")
            return 200, "text/html; charset=utf-8", html
        if path == "/asyncapi.json":
            return 200, "application/json", self.json()
        if path == "/asyncapi.yaml":
            return 200, "application/yaml; charset=utf-8", self.yaml()
        return 404, "text/plain; charset=utf-8", b"not found\n"


def asyncapi_asgi(app: App, **options: Any) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app serving ``app``'s AsyncAPI page; ``options`` go to :func:`asyncapi`."""
    docs = AsyncAPIDocs(app, **options)

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # mounted apps do not get it; a bare one does
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        prefix = str(scope.get("root_path", "")).rstrip("/")
        path = str(scope.get("path", ""))
        if prefix and path.startswith(prefix):
            path = path[len(prefix) :]
        if scope.get("method") not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain; charset=utf-8", b"method not allowed\n"
        else:
            status, ctype, body = docs.response(path, prefix)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype.encode("ascii")),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"x-content-type-options", b"nosniff"),
                ],
            }
        )
        head = scope["method"] == "HEAD"
        await send({"type": "http.response.body", "body": b"" if head else body})

    return serve
