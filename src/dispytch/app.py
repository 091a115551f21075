"""App: one object that owns a backend built from a URL, its handlers, its emitter and its life."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from dispytch.backend import Backend, backend_from_url
from dispytch.dead_letter import fallback_topic
from dispytch.dedup import DedupStore
from dispytch.emitter.emitter import EventEmitter
from dispytch.errors import ConfigurationError, DispytchError, ListenerError, RegistrationError
from dispytch.events import Event, EventBase
from dispytch.handler import HandlerGroup, check_timeout
from dispytch.health import Health, Monitor, assess
from dispytch.listener.listener import (
    DEFAULT_MAX_BUFFER_BYTES,
    EventListener,
    ListenerObserver,
    Ordering,
)
from dispytch.logs import EventLog, event_log_wanted
from dispytch.middleware import APP_SCOPES, check_middleware, scope_methods
from dispytch.request import Requester
from dispytch.retry import RetryMode, RetryPolicy, check_retry_mode
from dispytch.serialization.deserializer import Deserializer
from dispytch.serialization.json import JSONDeserializer
from dispytch.serialization.serializer import Serializer

__all__ = ["App"]

logger = logging.getLogger("dispytch.app")

ENV_BROKER_URL = "DISPYTCH_BROKER_URL"

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)
Hook = Callable[[], Awaitable[None] | None]


class App:
    """An event-driven service.

    ``App("kafka://127.0.0.1:9092", group="billing")`` builds and owns the broker clients;
    without a URL it reads ``DISPYTCH_BROKER_URL``. Register handlers with :meth:`handler` or
    :meth:`add_handler_group`, emit with :meth:`emit`, and run it with ``dispytch run
    module:app`` (or ``async with app:`` / ``await app.run()``).

    ``middleware`` wraps every message handled and every event emitted (see
    :mod:`dispytch.middleware`); ``handler_timeout`` bounds each handler attempt unless the
    handler sets its own ``timeout``; ``max_buffer_bytes`` bounds the payload bytes held
    (fetched, not yet settled). On shutdown, in-flight work gets ``shutdown_timeout`` seconds,
    then it is cancelled, and handlers that ignore the cancellation for ``shutdown_grace``
    seconds more are abandoned (their messages handed back, never acknowledged).

    ``dedup`` (a :class:`~dispytch.dedup.DedupStore` such as
    :class:`~dispytch.redis.RedisDedup`) makes every handler skip an event it already succeeded
    on (a redelivery after a crash, a replay); ``@app.handler(..., dedup=False)`` opts one out.
    See :mod:`dispytch.dedup` for the window that remains.
    ``retry_mode="broker"`` makes the retries of every handler (that does not choose
    otherwise) delayed deliveries by the broker instead of waits in the process (see
    :meth:`HandlerGroup.handler <dispytch.handler.HandlerGroup.handler>`).

    A dead letter the consumer's destination cannot store (after ``dead_letter_retry``
    attempts) goes to the backend's fallback destination, or to the topic
    ``dispytch.dlq.<group>`` through the app's producer; when that fails too, the app stops
    with :class:`~dispytch.errors.DeadLetterError`.

    :meth:`health` reports whether the app is connected, subscribed and making progress; its
    first call starts a check of the broker every ``health_interval`` seconds (``None``: never
    ask the broker), and an app with work waiting that settled nothing for ``stall_timeout``
    seconds is reported not ready.

    Options not named here (``**backend_options``) go to the backend and from there to the
    broker client, under the client's own names.
    """

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        group: str = "dispytch",
        serializer: Serializer | None = None,
        deserializer: Deserializer | None = None,
        concurrency: int = 64,
        ordering: Ordering = "key",
        shutdown_timeout: float = 30.0,
        shutdown_grace: float = 2.0,
        max_deliveries: int = 10,
        max_buffer_bytes: int | None = DEFAULT_MAX_BUFFER_BYTES,
        handler_timeout: float | None = None,
        middleware: Sequence[object] | None = None,
        dead_letter_retry: RetryPolicy | None = None,
        topic_delimiter: str | None = None,
        dedup: DedupStore | None = None,
        retry_mode: RetryMode = "process",
        health_interval: float | None = 5.0,
        stall_timeout: float = 60.0,
        backend: Backend | None = None,
        **backend_options: Any,
    ) -> None:
        if dedup is not None and not isinstance(dedup, DedupStore):
            raise ConfigurationError(
                f"dedup must be a DedupStore (MemoryDedup(), RedisDedup(url)), got {dedup!r}"
            )
        if backend is None:
            url = broker_url or os.environ.get(ENV_BROKER_URL)
            if not url:
                raise ConfigurationError(
                    f"no broker URL: pass App('kafka://host:9092') or set {ENV_BROKER_URL} "
                    "(memory:// runs everything in this process)"
                )
            backend = backend_from_url(url, **backend_options)
        self.backend = backend
        self.group = group
        self.serializer = serializer
        self.deserializer = deserializer
        self.concurrency = concurrency
        self.ordering = ordering
        self.shutdown_timeout = shutdown_timeout
        self.shutdown_grace = shutdown_grace
        self.max_deliveries = max_deliveries
        self.max_buffer_bytes = max_buffer_bytes
        self.handler_timeout = check_timeout(handler_timeout, "handler_timeout")
        self.dead_letter_retry = dead_letter_retry
        #: Where handlers remember the events they succeeded on (``None``: no dedup).
        self.dedup = dedup
        #: Where retries of handlers that do not choose wait: "process" or "broker".
        self.retry_mode: RetryMode = check_retry_mode(retry_mode, "retry_mode") or "process"
        self.health_interval = check_timeout(health_interval, "health_interval")
        stall = check_timeout(stall_timeout, "stall_timeout")
        if stall is None:
            raise RegistrationError("stall_timeout must be a number of seconds > 0, got None")
        self.stall_timeout = stall
        #: Middleware around every message, handler call and emit, outermost first.
        self.middleware: list[object] = list(middleware or ())
        for item in self.middleware:
            check_middleware(item, "App(middleware=...)", APP_SCOPES)
        self.topic_delimiter = topic_delimiter or backend.topic_delimiter
        #: What a topic placeholder value may hold: the backend's rules, split at the app's
        #: delimiter; checked on every emit and on every consumed topic segment.
        self.topic_rules = backend.topic_rules.with_delimiter(self.topic_delimiter)
        #: ``{provider: replacement}``; applied when the app starts (handy in tests).
        self.dependency_overrides: dict[Callable[..., Any], Any] = {}
        self.observer: ListenerObserver | None = None
        self._own = HandlerGroup()
        self._groups: list[HandlerGroup] = [self._own]
        #: Register a handler on the app itself; see :meth:`HandlerGroup.handler`.
        self.handler = self._own.handler
        #: Event classes this app emits, declared with :meth:`publishes` (for its AsyncAPI).
        self.published: list[type[EventBase]] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._emitter: EventEmitter | None = None
        self._listener: EventListener | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._stop_requested: asyncio.Event | None = None
        self._requester: Requester | None = None
        self._monitor: Monitor | None = None

    def __repr__(self) -> str:
        return f"App({self.backend.redact(self.backend.url)!r}, group={self.group!r})"

    # -- registration -------------------------------------------------------------------------

    def add_handler_group(self, group: HandlerGroup) -> None:
        if self._listener is not None:
            raise ListenerError("add handler groups before the app starts")
        self._groups.append(group)

    def publishes(self, *events: type[EventBase]) -> None:
        """Declare event classes this app emits, e.g. ``app.publishes(UserRegistered)``.

        Emitting works without it; the declaration adds a ``send`` operation per class (and its
        channel and message) to the app's AsyncAPI document (``dispytch docs gen``).
        """
        for event in events:
            if not (isinstance(event, type) and issubclass(event, EventBase)):
                raise RegistrationError(
                    f"app.publishes() takes EventBase subclasses, got {event!r}"
                )
            if event.__topic_template__ is None or not hasattr(event, "__event_type__"):
                raise RegistrationError(
                    f"{event.__name__} needs __topic__ and __event_type__ to be published"
                )
            if event not in self.published:
                self.published.append(event)

    def add_middleware(self, middleware: object) -> None:
        """Wrap every message, handler call and emit in ``middleware``, inside the middleware
        added before it (the first one is the outermost). Add middleware before the app
        starts."""
        if self._emitter is not None:
            raise ListenerError("add middleware before the app starts")
        check_middleware(middleware, "App middleware", APP_SCOPES)
        self.middleware.append(middleware)

    def on_startup(self, func: F) -> F:
        """Run ``func()`` (sync or async) when the app starts, before handlers receive events."""
        self._startup.append(func)
        return func

    def on_shutdown(self, func: F) -> F:
        """Run ``func()`` (sync or async) after the app stopped handling events."""
        self._shutdown.append(func)
        return func

    @property
    def has_handlers(self) -> bool:
        return any(group.handlers for group in self._groups)

    # -- emitting -----------------------------------------------------------------------------

    @property
    def emitter(self) -> EventEmitter:
        if self._emitter is None:
            raise ListenerError("the app is not started; use 'async with app:' or app.start()")
        return self._emitter

    async def emit(self, event: EventBase, *, headers: Mapping[str, str] | None = None) -> None:
        """Emit one event (with ``headers``, which handlers read as ``event.headers``); return
        after the broker confirmed it, raise otherwise."""
        await self.emitter.emit(event, headers=headers)

    async def emit_many(
        self, events: Iterable[EventBase], *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Emit many events with pipelined confirms (``headers`` go with each); returns after
        all were confirmed."""
        await self.emitter.emit_many(events, headers=headers)

    # -- request/reply ------------------------------------------------------------------------

    @overload
    async def request(
        self,
        event: EventBase,
        *,
        timeout: float = ...,
        reply: None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Event[dict[str, Any]]: ...

    @overload
    async def request(
        self,
        event: EventBase,
        *,
        timeout: float = ...,
        reply: type[M],
        headers: Mapping[str, str] | None = None,
    ) -> M: ...

    async def request(
        self,
        event: EventBase,
        *,
        timeout: float = 30.0,
        reply: type[BaseModel] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Emit ``event`` as a request and return the reply its handler returned.

        Without ``reply`` the result is an ``Event`` whose ``body`` is the reply's body (a dict)
        and whose ``type`` is the reply's type; with ``reply=Model`` (a pydantic model or an
        ``EventBase`` subclass) the body is validated into a ``Model``
        (:class:`~dispytch.errors.PayloadValidationError` if it does not fit).

        Raises :class:`~dispytch.errors.RequestTimeout` (a ``TimeoutError``) when no reply came
        within ``timeout`` seconds, :class:`~dispytch.errors.RequestFailed` when the handler
        failed for good, and :class:`~dispytch.errors.ConfigurationError` on a backend without
        a reliable reply path (Redis Pub/Sub). See :mod:`dispytch.request`.
        """
        check_timeout(timeout, "timeout")
        if reply is not None and not (isinstance(reply, type) and issubclass(reply, BaseModel)):
            raise ConfigurationError(
                f"reply= takes a pydantic model class (or an EventBase subclass), got {reply!r}"
            )
        if self._requester is None:
            emitter = self.emitter
            self._requester = Requester(
                lambda: self.backend.reply_inbox(self.group),
                emitter,
                self.deserializer or JSONDeserializer(),
            )
        return await self._requester.request(event, timeout, reply, headers)

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def listener(self) -> EventListener | None:
        return self._listener

    @property
    def started(self) -> bool:
        """Whether the app is started (connected, until :meth:`stop`)."""
        return self._emitter is not None

    async def start(self) -> None:
        """Connect, run startup hooks, and start handling events in the background."""
        if self._emitter is not None:
            raise ListenerError("the app is already started")
        self._stop_requested = asyncio.Event()
        logger.info("starting %r", self)
        await self.backend.connect()
        producer = self.backend.producer()
        self._emitter = EventEmitter(
            producer, self.serializer, topic_rules=self.topic_rules, middleware=self.middleware
        )
        for hook in self._startup:
            await _call(hook)
        if self.has_handlers:
            # The per-event DEBUG lines cost nothing unless that logger is on at start.
            middleware = [*self.middleware, EventLog()] if event_log_wanted() else self.middleware
            listener = EventListener(
                self.backend.consumer(
                    self.group, prefetch=self.concurrency, max_buffer_bytes=self.max_buffer_bytes
                ),
                self.deserializer,
                self.topic_delimiter,
                concurrency=self.concurrency,
                ordering=self.ordering,
                shutdown_timeout=self.shutdown_timeout,
                shutdown_grace=self.shutdown_grace,
                dead_letter_producer=producer,
                dead_letter_fallback_topic=fallback_topic(self.group),
                dead_letter_retry=self.dead_letter_retry,
                max_deliveries=self.max_deliveries,
                max_buffer_bytes=self.max_buffer_bytes,
                handler_timeout=self.handler_timeout,
                middleware=middleware,
                observer=self.observer,
                dependency_overrides=self.dependency_overrides,
                topic_rules=self.topic_rules,
                emitter=self._emitter,
                dedup=self.dedup,
                dedup_scope=self.group,
                retry_mode=self.retry_mode,
            )
            for group in self._groups:
                listener.add_handler_group(group)
            await listener.subscribe()
            self._listener = listener
            self._monitor = Monitor(
                listener,
                self.health_interval,
                stall_timeout=self.stall_timeout,
                redact=self.backend.redact,
            )
        for startup in scope_methods(self.middleware, "startup"):
            await startup(self)
        if self._listener is not None:
            self._listen_task = asyncio.create_task(self._listener.listen(), name="dispytch-listen")
            self._listen_task.add_done_callback(self._listener_done)
            logger.info(
                "listening as group %r on %s",
                self.group,
                ", ".join(p.raw for p in self._listener.routes().patterns()),
            )

    def _listener_done(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if isinstance(error, DispytchError):  # says what happened and what to do: one line
            logger.error("listener stopped: %s: %s", type(error).__name__, error)
        elif error is not None:
            logger.error("listener stopped with an error", exc_info=error)
        if self._stop_requested is not None:
            self._stop_requested.set()

    def health(self) -> Health:
        """A snapshot of the app's health: started, listening, subscribed, connected to the
        broker, messages in flight, last progress and consumer lag (see
        :class:`~dispytch.health.Health`; ``health().ready`` is what ``/readyz`` answers).

        Cheap and synchronous. The first call on a running app starts a check of the broker
        every ``health_interval`` seconds in the background (``connected`` and ``lag`` come
        from the last one), so an app nobody asks never sends the broker anything more.
        """
        monitor = self._monitor
        if monitor is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: report what is known
                monitor.start()
        task = self._listen_task
        return assess(
            started=self._emitter is not None,
            listener=self._listener,
            listener_running=task is not None and not task.done(),
            monitor=monitor,
        )

    def request_stop(self) -> None:
        """Ask a running :meth:`run` to stop (what SIGTERM does)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def stop(self) -> None:
        """Stop fetching, drain in-flight work (``shutdown_timeout``), run hooks, disconnect."""
        error: BaseException | None = None
        if self._listener is not None and self._listen_task is not None:
            self._listener.stop()
            try:
                await self._listen_task
            except Exception as exc:
                error = exc
        requester, self._requester = self._requester, None
        if requester is not None:
            await requester.close()
        if self._monitor is not None:
            await self._monitor.stop()
        for hook in self._shutdown:
            try:
                await _call(hook)
            except Exception:
                logger.exception("shutdown hook %r failed", hook)
        if self.dedup is not None:
            try:
                await self.dedup.close()
            except Exception:
                logger.exception("closing the dedup store %r failed", self.dedup)
        for shutdown in scope_methods(self.middleware, "shutdown"):
            try:
                await shutdown(self)
            except Exception:
                logger.exception("middleware shutdown %r failed", shutdown)
        await self.backend.close()
        self._listener = None
        self._listen_task = None
        self._monitor = None
        self._emitter = None
        logger.info("stopped %r", self)
        if error is not None:
            raise error

    async def run(self) -> None:
        """Start, run until :meth:`request_stop` (or the listener fails), then stop."""
        await self.start()
        assert self._stop_requested is not None
        try:
            await self._stop_requested.wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def _call(hook: Hook) -> None:
    result = hook()
    if inspect.isawaitable(result):
        await result
