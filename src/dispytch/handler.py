"""Handlers and handler groups: what runs for which topic and event type."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from dispytch.di.plan import CallPlan, build_plan
from dispytch.errors import MissingTopicError, RegistrationError
from dispytch.middleware import check_middleware
from dispytch.retry import Backoff, RetryMode, RetryPolicy, check_retry_mode

__all__ = ["HandlerGroup", "HandlerSpec"]

#: An ``async def`` function, or a ``def`` one (run in a worker thread).
HandlerFunc = Callable[..., Any]
F = TypeVar("F", bound=HandlerFunc)

_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """One registered handler: its function, where it listens and how it retries."""

    func: HandlerFunc
    topic: str
    event_type: str
    retry: RetryPolicy
    plan: CallPlan
    segments: frozenset[str]
    #: seconds one attempt may take; ``None``: the listener's ``handler_timeout``
    timeout: float | None = None
    #: this handler's own middleware (``handle`` scope), outermost first
    middleware: tuple[object, ...] = ()
    #: skip events this handler already succeeded on: ``True``, ``False`` or ``None`` (the
    #: app's choice: on when the app has a dedup store)
    dedup: bool | None = None
    #: where its retries wait; ``None``: the listener's (app's) ``retry_mode``
    retry_mode: RetryMode | None = None

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def key(self) -> str:
        """The handler's name across processes and restarts: ``module.qualname``."""
        module = getattr(self.func, "__module__", None)
        return f"{module}.{self.plan.name}" if module else self.plan.name

    def with_overrides(self, overrides: Mapping[Callable[..., Any], Any]) -> HandlerSpec:
        if not overrides:
            return self
        return replace(self, plan=build_plan(self.func, self.segments, overrides))


def check_timeout(timeout: object, what: str) -> float | None:
    """``timeout`` as seconds (``None``: no limit); a bad value raises RegistrationError."""
    if timeout is None:
        return None
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise RegistrationError(f"{what} must be a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def check_middleware_list(middleware: Iterable[object] | None, where: str) -> tuple[object, ...]:
    """Handler and group middleware: only the ``handle`` scope applies there."""
    items = tuple(middleware or ())
    for item in items:
        check_middleware(item, where, ("handle",))
    return items


def check_route(topic: str | None, event: str | None, where: str) -> tuple[str, str]:
    """The handler's topic and event type; raise :class:`MissingTopicError` (a TypeError, as
    in 0.10) if one is missing."""
    if not topic or not isinstance(topic, str):
        raise MissingTopicError(
            f"{where} has no topic; pass topic=... or set HandlerGroup(default_topic=...)"
        )
    if not event or not isinstance(event, str):
        raise MissingTopicError(
            f"{where} has no event type; pass event=... or set HandlerGroup(default_event=...)"
        )
    return topic, event


def make_spec(
    func: HandlerFunc,
    topic: str | None,
    event: str | None,
    retry: RetryPolicy,
    timeout: float | None = None,
    middleware: tuple[object, ...] = (),
    dedup: bool | None = None,
    retry_mode: RetryMode | None = None,
) -> HandlerSpec:
    topic, event = check_route(topic, event, f"handler {getattr(func, '__qualname__', func)!s}")
    segments = frozenset(_SEGMENT.findall(topic))
    return HandlerSpec(
        func,
        topic,
        event,
        retry,
        build_plan(func, segments),
        segments,
        timeout,
        middleware,
        dedup,
        retry_mode,
    )


class HandlerGroup:
    """A set of handlers, registered with ``@group.handler(...)`` and added to a listener or app.

    ``default_topic`` and ``default_event`` apply to handlers that do not name their own.
    ``middleware`` wraps each call of this group's handlers (their ``handle`` scope; see
    :mod:`dispytch.middleware`), outermost first.
    Every handler is checked when it is registered: a bad signature, an unknown topic segment or
    a dependency cycle raises :class:`~dispytch.errors.RegistrationError` right there.
    """

    def __init__(
        self,
        default_topic: str | None = None,
        default_event: str | None = None,
        *,
        middleware: Sequence[object] | None = None,
    ) -> None:
        self.default_topic = default_topic
        self.default_event = default_event
        self.middleware: list[object] = list(
            check_middleware_list(middleware, "HandlerGroup(middleware=...)")
        )
        self.handlers: list[HandlerSpec] = []
        # Checks of the listeners this group was added to, run on each new handler so a
        # mismatch (e.g. the topic delimiter) is reported at registration too.
        self._checks: list[Callable[[HandlerSpec], object]] = []

    def handler(
        self,
        topic: str | None = None,
        event: str | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | Sequence[type[BaseException]] | None = None,
        retry_interval: float = 1.25,
        *,
        backoff: Backoff = "fixed",
        max_retry_interval: float = 60.0,
        jitter: float = 0.0,
        timeout: float | None = None,
        middleware: Sequence[object] | None = None,
        dedup: bool | None = None,
        retry_mode: RetryMode | None = None,
    ) -> Callable[[F], F]:
        """Register a handler for ``event`` on ``topic``: an ``async def`` function, or a plain
        ``def`` one, which runs in a worker thread (see :mod:`dispytch.di.threads`) with the
        same retries and dead-lettering.

        ``retries`` extra attempts are made for exceptions in ``retry_on`` (default: any
        ``Exception``), waiting ``retry_interval`` seconds (``backoff="exponential"`` doubles it,
        capped at ``max_retry_interval``; ``jitter`` spreads it). After the last attempt the
        event is dead-lettered.

        ``timeout`` bounds each attempt, in seconds (default: the app's ``handler_timeout``,
        itself unlimited by default): an attempt that runs longer is cancelled and fails with
        :class:`~dispytch.errors.HandlerTimeout`, retried and dead-lettered like any failure.
        ``middleware`` wraps each attempt of this handler (``handle`` scope), inside the
        group's and the app's.

        What the handler returns is used (see :mod:`dispytch.listener.outputs`): an
        ``EventBase`` (or a list of them) is emitted once the handler succeeded, before the
        message is acknowledged; for a message sent with ``app.request()`` the return value is
        the reply.

        ``dedup=True`` skips an event this handler already succeeded on (a redelivery, a
        replay), using the app's dedup store (``App(dedup=...)``), or an in-process
        :class:`~dispytch.dedup.MemoryDedup` without one; ``dedup=False`` turns it off for this
        handler in an app that has a store; the default follows the app.
        ``retry_mode="broker"`` makes each retry a delayed delivery by the broker instead of a
        wait in the process: the event is stored again with the attempt count (Kafka retry
        topics, RabbitMQ delay queues, JetStream ``nak`` with a delay, a Redis sorted set)
        and acknowledged, so the concurrency slot and the key lane are free during the
        back-off; a retried event is then handled after later events of its key. The default
        (``None``) is the app's ``retry_mode``, itself ``"process"`` by default.
        """
        # Checked here already, as 0.10 did: ``group.handler()`` alone raises.
        check_route(topic or self.default_topic, event or self.default_event, "@group.handler()")
        retry = RetryPolicy.build(
            retries, retry_on, retry_interval, backoff, max_retry_interval, jitter
        )
        limit = check_timeout(timeout, "timeout")
        own = check_middleware_list(middleware, "handler(middleware=...)")
        if dedup is not None and not isinstance(dedup, bool):
            raise RegistrationError(f"dedup must be True, False or None, got {dedup!r}")
        mode = check_retry_mode(retry_mode, "retry_mode")

        def decorator(func: F) -> F:
            spec = make_spec(
                func,
                topic or self.default_topic,
                event or self.default_event,
                retry,
                limit,
                own,
                dedup,
                mode,
            )
            for check in self._checks:
                check(spec)
            self.handlers.append(spec)
            return func

        return decorator

    def add_middleware(self, middleware: object) -> None:
        """Wrap every call of this group's handlers in ``middleware`` (``handle`` scope), inside
        the ones added before it. Add middleware before the app starts."""
        self.middleware.extend(check_middleware_list([middleware], "HandlerGroup.add_middleware"))
