"""Handlers and handler groups: what runs for which topic and event type."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from dispytch.di.plan import CallPlan, build_plan
from dispytch.errors import MissingTopicError
from dispytch.retry import Backoff, RetryPolicy

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

    @property
    def name(self) -> str:
        return self.plan.name

    def with_overrides(self, overrides: Mapping[Callable[..., Any], Any]) -> HandlerSpec:
        if not overrides:
            return self
        plan = build_plan(self.func, self.segments, overrides)
        return HandlerSpec(self.func, self.topic, self.event_type, self.retry, plan, self.segments)


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
) -> HandlerSpec:
    topic, event = check_route(topic, event, f"handler {getattr(func, '__qualname__', func)!s}")
    segments = frozenset(_SEGMENT.findall(topic))
    return HandlerSpec(func, topic, event, retry, build_plan(func, segments), segments)


class HandlerGroup:
    """A set of handlers, registered with ``@group.handler(...)`` and added to a listener or app.

    ``default_topic`` and ``default_event`` apply to handlers that do not name their own.
    Every handler is checked when it is registered: a bad signature, an unknown topic segment or
    a dependency cycle raises :class:`~dispytch.errors.RegistrationError` right there.
    """

    def __init__(self, default_topic: str | None = None, default_event: str | None = None) -> None:
        self.default_topic = default_topic
        self.default_event = default_event
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
    ) -> Callable[[F], F]:
        """Register a handler for ``event`` on ``topic``: an ``async def`` function, or a plain
        ``def`` one, which runs in a worker thread (see :mod:`dispytch.di.threads`) with the
        same retries and dead-lettering.

        ``retries`` extra attempts are made for exceptions in ``retry_on`` (default: any
        ``Exception``), waiting ``retry_interval`` seconds (``backoff="exponential"`` doubles it,
        capped at ``max_retry_interval``; ``jitter`` spreads it). After the last attempt the
        event is dead-lettered.
        """
        # Checked here already, as 0.10 did: ``group.handler()`` alone raises.
        check_route(topic or self.default_topic, event or self.default_event, "@group.handler()")
        retry = RetryPolicy.build(
            retries, retry_on, retry_interval, backoff, max_retry_interval, jitter
        )

        def decorator(func: F) -> F:
            spec = make_spec(func, topic or self.default_topic, event or self.default_event, retry)
            for check in self._checks:
                check(spec)
            self.handlers.append(spec)
            return func

        return decorator
