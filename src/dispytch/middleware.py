"""Middleware: code that wraps every message handled and every event emitted.

A middleware is an object with up to three *scopes*, each an ``async`` method that receives a
context and ``call_next``, does its work around ``await call_next(context)``, and returns what
``call_next`` returned (as Starlette middleware wraps an app):

* :meth:`Middleware.consume` wraps one message from the moment it was fetched until it was
  settled: decoding, routing, every matching handler with its retries, and the settle itself.
  After ``call_next`` returns, :attr:`ConsumeContext.outcome` says what happened
  (``"handled"``, ``"no_handler"``, ``"dead_lettered"``, ``"handed_back"``, or ``"retried"``:
  handed to the broker for a delayed retry, see ``retry_mode="broker"``).
* :meth:`Middleware.handle` wraps one attempt of one handler (a retried handler passes through
  it once per attempt). ``call_next`` raises what the handler raised.
* :meth:`Middleware.publish` wraps each ``emit`` and ``emit_many``, before the bytes are sent;
  it may add headers to the outgoing messages.

Two synchronous hooks are the cheap path for code that only records (metrics, logs):
:meth:`Middleware.after_consume` is called once per message as soon as it was settled, and
:meth:`Middleware.after_publish` once per emit after the broker confirmed or refused it. They
build no coroutine. :meth:`Middleware.startup` and :meth:`Middleware.shutdown` run when an
:class:`~dispytch.app.App` starts and stops (before its first message, after its last).

Override only the scopes you need; a scope left as inherited costs nothing. Register
middleware on the app (``App(middleware=[...])`` or :meth:`App.add_middleware
<dispytch.app.App.add_middleware>`): all three scopes apply. On a handler group
(``HandlerGroup(middleware=[...])``) or on one handler (``@group.handler(...,
middleware=[...])``) only the ``handle`` scope applies, to that group's or handler's calls.

Order: the first middleware in a list is the outermost. Around a handler, the app's run
outside the group's, which run outside the handler's own. With no middleware registered the
listener and the emitter run exactly as without this module: no context object is built and
no extra coroutine is awaited.

An exception raised by a ``handle`` scope is a handler failure (retried, then dead-lettered).
A ``consume`` scope that raises before its message was settled gets the message dead-lettered
with reason ``middleware``; one that raises after it was settled is logged and changes nothing.
An exception from ``after_consume`` or ``after_publish`` is logged and changes nothing.
``CancelledError`` (shutdown) must be let through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from dispytch.errors import RegistrationError
from dispytch.untrusted import loggable

if TYPE_CHECKING:
    from dispytch.app import App
    from dispytch.events import Envelope, Event, EventBase
    from dispytch.listener.pipeline import Route
    from dispytch.seam import Failure, Message

__all__ = [
    "ConsumeContext",
    "FailedAttempt",
    "HandlerCall",
    "Middleware",
    "Outbound",
    "Outcome",
    "PublishContext",
]

#: What became of one message: every handler succeeded; no handler matched its type (acked);
#: it was dead-lettered (then acked); it was handed back to the broker unacknowledged
#: (shutdown, or the listener stopped).
Outcome = Literal["handled", "no_handler", "dead_lettered", "handed_back", "retried"]

T = TypeVar("T")

logger = logging.getLogger("dispytch.middleware")


class _OfMessage:
    """What a context tells about the message it is about."""

    __slots__ = ()
    message: Message

    @property
    def topic(self) -> str:
        """The concrete topic the message came from (high cardinality: not a metric label)."""
        return self.message.topic

    @property
    def headers(self) -> Mapping[str, str]:
        """The message's headers as the broker delivered them."""
        return self.message.headers


class _OfRoute:
    """What a context tells about the handler it is about."""

    __slots__ = ()
    _route: Route

    @property
    def handler(self) -> str:
        """The handler's qualified name."""
        return self._route.name

    @property
    def pattern(self) -> str:
        """The handler's topic as registered (``user:{user_id}:events``)."""
        return self._route.pattern


class _WithState:
    """A per-context dict for middleware, made on first use."""

    __slots__ = ("_state",)
    _state: dict[str, Any] | None

    @property
    def state(self) -> dict[str, Any]:
        if self._state is None:
            self._state = {}
        return self._state


class FailedAttempt(_OfRoute):
    """One handler attempt that raised, as :attr:`ConsumeContext.failed_attempts` lists it.

    ``retried`` says whether the listener tried again after it (``False``: the handler's last
    attempt, so the message was dead-lettered, or the listener was stopping); ``at`` is the
    wall-clock time of the failure in nanoseconds (``time.time_ns()``).
    """

    __slots__ = ("_route", "at", "attempt", "error", "retried")

    def __init__(
        self, route: Route, attempt: int, error: BaseException, retried: bool, at: int
    ) -> None:
        self._route = route
        self.attempt = attempt
        self.error = error
        self.retried = retried
        self.at = at

    @property
    def event_type(self) -> str:
        """The event type the handler was registered for."""
        return self._route.event_type

    def __repr__(self) -> str:
        return (
            f"FailedAttempt(handler={self.handler!r}, attempt={self.attempt}, "
            f"error={type(self.error).__name__}, retried={self.retried})"
        )


class ConsumeContext(_OfMessage, _WithState):
    """One message as it goes through the listener; what :meth:`Middleware.consume` sees.

    Fields filled in as the message progresses: ``event_id`` and ``event_type`` once the
    payload was decoded (``None`` if it could not be), ``outcome``, ``failure`` and ``error``
    once it was settled, ``duration`` (seconds from fetch to settle). ``failed_attempts``
    lists the handler attempts that raised (``None`` when none did). ``state`` is a dict for
    middleware to keep per-message data in (spans, timers...).
    """

    __slots__ = (
        "_matches",
        "duration",
        "error",
        "event_id",
        "event_type",
        "failed_attempts",
        "failure",
        "message",
        "outcome",
        "started",
    )

    def __init__(self, message: Message) -> None:
        self.message = message
        self.event_id: str | None = None
        self.event_type: str | None = None
        self.outcome: Outcome | None = None
        #: why the message was dead-lettered (``outcome == "dead_lettered"``)
        self.failure: Failure | None = None
        #: the exception behind ``failure`` or behind a handed-back message, when there is one
        self.error: BaseException | None = None
        #: ``time.perf_counter()`` when the listener took the message
        self.started = time.perf_counter()
        self.duration: float | None = None
        #: handler attempts that raised, in order (``None``: none did)
        self.failed_attempts: list[FailedAttempt] | None = None
        self._matches: Sequence[tuple[Route, Any]] = ()
        self._state: dict[str, Any] | None = None

    @property
    def handlers(self) -> tuple[str, ...]:
        """Names of the handlers the message was routed to (empty before routing)."""
        return tuple(route.name for route, _ in self._matches)

    @property
    def patterns(self) -> tuple[str, ...]:
        """The distinct topic patterns (as registered, e.g. ``user:{user_id}:events``) of the
        handlers the message was routed to: low cardinality, fit for metric labels."""
        return tuple(dict.fromkeys(route.pattern for route, _ in self._matches))

    def _failed(self, route: Route, attempt: int, error: BaseException, retried: bool) -> None:
        """Record a handler attempt that raised (the pipeline calls it; rare path)."""
        record = FailedAttempt(route, attempt, error, retried, time.time_ns())
        if self.failed_attempts is None:
            self.failed_attempts = [record]
        else:
            self.failed_attempts.append(record)

    def __repr__(self) -> str:
        return (
            f"ConsumeContext(topic={self.topic!r}, event_type={self.event_type!r}, "
            f"event_id={self.event_id!r}, outcome={self.outcome!r})"
        )


class HandlerCall(_OfMessage, _OfRoute):
    """One attempt of one handler; what :meth:`Middleware.handle` sees.

    ``handler`` is the handler's qualified name, ``pattern`` its topic as registered,
    ``attempt`` counts from 1 up to ``max_attempts``. ``event`` is what the handler receives
    (its ``headers`` are the message's).
    """

    __slots__ = ("_envelope", "_events", "_route", "_segments", "attempt", "message", "segments")

    def __init__(
        self,
        message: Message,
        route: Route,
        segments: Mapping[str, str],
        attempt: int,
        envelope: Envelope,
        events: list[Event[Any]],
        segment_values: list[Any],
    ) -> None:
        self.message = message
        self._route = route
        #: the topic segments captured by the pattern, as text (``{"user_id": "42"}``)
        self.segments = segments
        self.attempt = attempt
        self._envelope = envelope
        self._events = events
        self._segments = segment_values

    @property
    def max_attempts(self) -> int:
        return self._route.retry.attempts

    @property
    def timeout(self) -> float | None:
        """Seconds this attempt may take (``None``: no limit)."""
        return self._route.timeout

    @property
    def event(self) -> Event[Any]:
        """The event as the handler receives it (a raw-body one for a handler that takes none)."""
        if self._events:
            return self._events[0]
        from dispytch.events import Event

        envelope = self._envelope
        return Event(
            envelope.id,
            envelope.type,
            self.message.topic,
            envelope.body,
            envelope.timestamp,
            self.message.headers,
        )

    @property
    def event_id(self) -> str:
        return self._envelope.id

    @property
    def event_type(self) -> str:
        return self._envelope.type

    def will_retry(self, error: BaseException) -> bool:
        """Whether the listener retries after this attempt failed with ``error``."""
        return self._route.retry.should_retry(error, self.attempt)

    def __repr__(self) -> str:
        return (
            f"HandlerCall(handler={self.handler!r}, pattern={self.pattern!r}, "
            f"attempt={self.attempt}/{self.max_attempts})"
        )


class Outbound:
    """One message about to be sent by an emit. ``headers`` may be changed by middleware."""

    __slots__ = ("event", "headers", "key", "payload", "topic")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        headers: dict[str, str],
        key: bytes | None,
        event: EventBase,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.headers = headers
        self.key = key
        self.event = event

    def __repr__(self) -> str:
        return f"Outbound(topic={self.topic!r}, headers={self.headers!r})"


class PublishContext(_WithState):
    """One ``emit`` (one message) or ``emit_many`` (``batch`` is true); what
    :meth:`Middleware.publish` sees. After ``call_next`` returned or raised, ``errors`` holds
    one entry per message: ``None`` when the broker confirmed it, else the exception."""

    __slots__ = ("batch", "errors", "messages", "started")

    def __init__(self, messages: list[Outbound], batch: bool) -> None:
        self.messages = messages
        self.batch = batch
        self.errors: list[BaseException | None] | None = None
        self.started = time.perf_counter()
        self._state: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"PublishContext({len(self.messages)} message(s), batch={self.batch})"


ConsumeNext = Callable[[ConsumeContext], Awaitable[None]]
HandleNext = Callable[[HandlerCall], Awaitable[Any]]
PublishNext = Callable[[PublishContext], Awaitable[None]]


class Middleware:
    """Base class of middleware; override the scopes you need (see the module docs)."""

    async def consume(self, context: ConsumeContext, call_next: ConsumeNext) -> None:
        """Wrap one message from fetch to settle. Read ``context.outcome`` after ``call_next``."""
        await call_next(context)

    async def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        """Wrap one attempt of one handler; ``call_next`` raises what the handler raised."""
        return await call_next(call)

    async def publish(self, context: PublishContext, call_next: PublishNext) -> None:
        """Wrap one emit or emit_many; add headers to ``context.messages`` before ``call_next``."""
        await call_next(context)

    def after_consume(self, context: ConsumeContext) -> None:
        """Called once per message, synchronously, as soon as it was settled (``outcome``,
        ``duration``, ``failure`` and ``failed_attempts`` are filled in), before the
        ``consume`` scopes return. No coroutine is built for it: the cheap way to record."""

    def after_publish(self, context: PublishContext) -> None:
        """Called once per ``emit`` or ``emit_many``, synchronously, after the broker confirmed
        or refused it (``errors`` is filled in); after the ``publish`` scopes returned."""

    async def startup(self, app: App) -> None:
        """The ``app`` has connected and built its listener (``app.listener``, ``None`` for an
        app without handlers) and is about to handle its first message."""

    async def shutdown(self, app: App) -> None:
        """The ``app`` stopped handling messages and is about to disconnect."""


Scope = Literal[
    "consume", "handle", "publish", "after_consume", "after_publish", "startup", "shutdown"
]
#: The scopes that apply to middleware registered on an app or a listener.
APP_SCOPES: tuple[Scope, ...] = (
    "consume",
    "handle",
    "publish",
    "after_consume",
    "after_publish",
    "startup",
    "shutdown",
)


def scope_methods(middleware: Iterable[object], scope: Scope) -> list[Callable[..., Any]]:
    """The ``scope`` methods of ``middleware`` that do something (inherited no-ops left out)."""
    methods = []
    for item in middleware:
        method = getattr(item, scope, None)
        if method is None or getattr(type(item), scope, None) is getattr(Middleware, scope, None):
            continue
        methods.append(method)
    return methods


def run_hooks(hooks: Sequence[Callable[[T], object]], context: T) -> None:
    """Call each ``after_*`` hook; one that raises is logged and the others still run."""
    for hook in hooks:
        try:
            hook(context)
        except Exception as exc:
            hook_failed(hook, exc)


def hook_failed(hook: Callable[..., object], error: Exception) -> None:
    """Log that an ``after_*`` hook raised (it changes nothing else)."""
    logger.error(
        "middleware hook %s raised: %s: %s",
        getattr(hook, "__qualname__", hook),
        type(error).__name__,
        loggable(error),
    )


def check_middleware(middleware: object, where: str, scopes: Sequence[Scope]) -> None:
    """Refuse, at registration, an object that has none of the ``scopes`` that apply ``where``."""
    if isinstance(middleware, type):
        raise RegistrationError(
            f"{where}: got the class {middleware.__name__}; pass an instance, "
            f"{middleware.__name__}(...)"
        )
    if not scope_methods([middleware], scopes[0]) and not any(
        scope_methods([middleware], s) for s in scopes[1:]
    ):
        names = " or ".join(f"{s}()" for s in scopes)
        raise RegistrationError(
            f"{where}: {type(middleware).__name__} has no {names} method that applies here; "
            "subclass dispytch.middleware.Middleware and override a scope"
        )


def chain(
    methods: Sequence[Callable[[T, Any], Awaitable[Any]]], terminal: Callable[[T], Any]
) -> Any:
    """``methods[0]`` wrapping ``methods[1]`` ... wrapping ``terminal``: built once, called per
    message."""
    call = terminal
    for method in reversed(methods):
        call = _link(method, call)
    return call


def _link(method: Callable[[T, Any], Awaitable[Any]], call_next: Callable[[T], Any]) -> Any:
    def call(context: T) -> Awaitable[Any]:
        return method(context, call_next)

    return call
