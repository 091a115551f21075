"""Seed-style consumers, adapted once to the full :class:`~dispytch.listener.consumer.Consumer`.

A consumer written for the seed may implement only ``listen()`` and ``ack()``, with ``ack``
synchronous, and need not subclass ``Consumer`` at all. :func:`as_consumer` wraps such an object
once, when the listener is built, so the per-message path calls plain coroutine methods and
never looks attributes up or checks for awaitables.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from dispytch.errors import RegistrationError
from dispytch.seam import Consumer, Failure, Message

if TYPE_CHECKING:
    from dispytch.routing import TopicPattern

__all__ = ["as_consumer"]

#: The seam's methods besides ``listen``; each may be missing or synchronous on a seed consumer.
_METHODS = ("ack", "nack", "dead_letter", "dead_letter_fallback", "start", "close", "lag")


def as_consumer(consumer: Any) -> Consumer:
    """``consumer`` itself when it is a ``Consumer`` whose methods are all coroutines, else an
    adapter that calls what it has and falls back to the seam's defaults for the rest."""
    if isinstance(consumer, Consumer) and all(
        inspect.iscoroutinefunction(getattr(consumer, name)) for name in _METHODS
    ):
        return consumer
    return SeedConsumer(consumer)


def _as_async(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    if inspect.iscoroutinefunction(func):
        return func

    async def call(*args: Any) -> Any:
        result = func(*args)
        if inspect.isawaitable(result):
            return await result
        return result

    return call


class SeedConsumer(Consumer):
    """A consumer with only some of the seam's methods, some of them synchronous."""

    def __init__(self, inner: Any) -> None:
        missing = [name for name in ("listen", "ack") if not callable(getattr(inner, name, None))]
        if missing:
            raise RegistrationError(
                f"{type(inner).__name__} is not a consumer: it has no {' or '.join(missing)}(); "
                "subclass dispytch.listener.consumer.Consumer"
            )
        self.inner = inner
        base = Consumer
        for name in _METHODS:
            method = getattr(inner, name, None)
            if method is None:
                continue
            # A Consumer subclass inherits coroutine defaults; only what it defines is wrapped.
            if getattr(type(inner), name, None) is getattr(base, name, object()):
                continue
            setattr(self, name, _as_async(method))

    def listen(self) -> AsyncIterator[Message]:
        stream: AsyncIterator[Message] = self.inner.listen()
        return stream

    # Typed stand-ins, replaced per instance by the wrapped methods in __init__.

    async def ack(self, message: Message) -> None:  # pragma: no cover - always replaced
        raise NotImplementedError("a consumer must implement ack()")

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        """A seed consumer without ``start()`` was subscribed by its user."""

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        return False

    def __repr__(self) -> str:
        return f"SeedConsumer({self.inner!r})"
