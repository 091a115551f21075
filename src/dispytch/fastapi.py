"""FastAPI integration (``pip install "dispytch[fastapi]"``).

    from dispytch.fastapi import Emitter, lifespan, routes

    events = App("kafka://127.0.0.1:9092", group="orders")
    api = FastAPI(lifespan=lifespan(events))        # the App starts and stops with the server
    api.include_router(routes(events))              # GET /healthz, /asyncapi(.json|.yaml)

    @api.post("/orders")
    async def create(order: Order, emitter: Emitter) -> dict[str, str]:
        await emitter.emit(OrderPlaced(...))        # returns once the broker confirmed it
        ...

The App starts before the web server accepts requests and stops (draining its in-flight
events) after the server stopped taking them. A lifespan of your own runs inside it:
``lifespan(events, inner=my_lifespan)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

try:
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.responses import JSONResponse, Response
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from dispytch.errors import MissingExtraError

    raise MissingExtraError("fastapi", "fastapi") from exc

from dispytch.app import App
from dispytch.asyncapi.asgi import AsyncAPIDocs
from dispytch.emitter.emitter import EventEmitter
from dispytch.errors import ConfigurationError

__all__ = ["DispytchApp", "Emitter", "get_app", "get_emitter", "health", "lifespan", "routes"]

#: Key of the App in the lifespan state (``request.state.dispytch``).
STATE_KEY = "dispytch"

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def lifespan(
    app: App, inner: Lifespan | None = None
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    """A FastAPI ``lifespan`` that runs ``app`` while the web server runs.

    ``inner`` (your own lifespan) runs while the App is started, so it can emit; the state it
    yields is kept, with the App added under ``"dispytch"``.
    """

    @asynccontextmanager
    async def run(web: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with app:
            if inner is None:
                yield {STATE_KEY: app}
                return
            async with inner(web) as state:
                yield {**(state or {}), STATE_KEY: app}

    return run


def get_app(request: Request) -> App:
    """Dependency: the App started by :func:`lifespan`."""
    app = getattr(request.state, STATE_KEY, None)
    if not isinstance(app, App):
        raise ConfigurationError(
            "no Dispytch app in this FastAPI app; create it with "
            "FastAPI(lifespan=dispytch.fastapi.lifespan(app))"
        )
    return app


def get_emitter(request: Request) -> EventEmitter:
    """Dependency: the started App's emitter (``await emitter.emit(event)``)."""
    return get_app(request).emitter


#: ``emitter: Emitter`` in a path operation gives the App's :class:`EventEmitter`.
Emitter = Annotated[EventEmitter, Depends(get_emitter)]
#: ``events: DispytchApp`` in a path operation gives the App itself.
DispytchApp = Annotated[App, Depends(get_app)]


def health(app: App) -> tuple[bool, dict[str, Any]]:
    """``(ready, details)`` from :meth:`App.health() <dispytch.app.App.health>`: ready once the
    App has started and, if it has handlers, listens, is subscribed, reaches the broker and
    makes progress. ``details`` is the health snapshot with ``status`` (``"ok"`` or why not)."""
    snapshot = app.health()
    return snapshot.ready, {"status": snapshot.reason or "ok", **snapshot.to_dict()}


def routes(
    app: App,
    *,
    health_path: str | None = "/healthz",
    asyncapi_path: str | None = "/asyncapi",
    include_in_schema: bool = False,
    **asyncapi_options: Any,
) -> APIRouter:
    """A router with ``GET health_path`` (200 or 503) and the AsyncAPI page at
    ``asyncapi_path`` (plus ``.json`` and ``.yaml``); ``None`` leaves one out.
    ``asyncapi_options`` (``title``, ``version``...) go to :func:`dispytch.asyncapi.asyncapi`.
    """
    router = APIRouter(include_in_schema=include_in_schema)
    if health_path is not None:

        @router.get(health_path)
        async def healthz() -> JSONResponse:
            ok, details = health(app)
            return JSONResponse(details, status_code=200 if ok else 503)

    if asyncapi_path is not None:
        docs = AsyncAPIDocs(app, **asyncapi_options)

        @router.get(asyncapi_path)
        async def asyncapi_page(request: Request) -> Response:
            page = request.url.path
            return Response(docs.html(page + ".json", page + ".yaml"), media_type="text/html")

        @router.get(asyncapi_path + ".json")
        async def asyncapi_json() -> Response:
            return Response(docs.json(), media_type="application/json")

        @router.get(asyncapi_path + ".yaml")
        async def asyncapi_yaml() -> Response:
            return Response(docs.yaml(), media_type="application/yaml")

    return router
