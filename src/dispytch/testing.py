"""Test helpers for services built with Dispytch: run an app in memory, no sleeps needed.

.. code-block:: python

    async with TestClient(app, overrides={get_user_service: fake_service}) as client:
        await client.emit(UserRegistered(...))
        await client.wait_idle()
        assert client.handled_by(handle_user_registered)
        assert client.dead_letters == []
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dispytch.app import App
from dispytch.dead_letter import DeadLetter
from dispytch.errors import ListenerError
from dispytch.events import Event, EventBase
from dispytch.memory.backend import MemoryBackend
from dispytch.memory.broker import MemoryBroker
from dispytch.middleware import ConsumeContext, ConsumeNext, HandleNext, HandlerCall, Middleware
from dispytch.seam import Failure, Message

__all__ = ["Handled", "TestClient"]


@dataclass(frozen=True, slots=True)
class Handled:
    """One successful handler invocation."""

    handler: str
    event: Event[Any]


class _Recorder(Middleware):
    """Records what happened, as the outermost middleware (it sees what the app's own
    middleware made of each call)."""

    def __init__(self) -> None:
        self.handled: list[Handled] = []
        self.failures: list[tuple[Message, Failure]] = []

    async def consume(self, context: ConsumeContext, call_next: ConsumeNext) -> None:
        await call_next(context)
        if context.outcome == "dead_lettered" and context.failure is not None:
            self.failures.append((context.message, context.failure))

    async def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        result = await call_next(call)
        self.handled.append(Handled(call.handler, call.event))
        return result


class TestClient:
    """Runs ``app`` on a private in-memory broker for the duration of an ``async with`` block.

    The app's own broker URL is ignored, so a service configured for Kafka is tested unchanged.
    ``overrides`` replace dependency providers (``{real_provider: fake_provider}``).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, app: App, overrides: Mapping[Callable[..., Any], Any] | None = None) -> None:
        self.app = app
        self.broker = MemoryBroker()
        self._overrides = dict(overrides or {})
        self._recorder = _Recorder()
        self._saved: tuple[Any, ...] | None = None

    async def __aenter__(self) -> TestClient:
        app = self.app
        self._saved = (app.backend, list(app.middleware), dict(app.dependency_overrides))
        app.backend = MemoryBackend("memory://", broker=self.broker)
        app.middleware.insert(0, self._recorder)
        app.dependency_overrides.update(self._overrides)
        try:
            await app.start()
        except BaseException:
            self._restore()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.app.stop()
        finally:
            self._restore()

    def _restore(self) -> None:
        if self._saved is not None:
            backend, middleware, overrides = self._saved
            self.app.backend = backend
            self.app.middleware[:] = middleware
            self.app.dependency_overrides.clear()
            self.app.dependency_overrides.update(overrides)
            self._saved = None

    async def emit(self, event: EventBase, *, headers: Mapping[str, str] | None = None) -> None:
        await self.app.emit(event, headers=headers)

    async def publish_raw(
        self, topic: str, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        """Put arbitrary bytes on a topic, e.g. to test how bad input is handled."""
        self.broker.publish(topic, payload, headers=headers)

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every emitted event was handled or dead-lettered (events emitted by
        handlers included). Raises TimeoutError after ``timeout`` seconds."""
        if self._saved is None:
            raise ListenerError("use the TestClient inside 'async with'")
        await self.broker.wait_idle(timeout)

    @property
    def handled(self) -> list[Handled]:
        """Every successful handler invocation, in completion order."""
        return list(self._recorder.handled)

    def handled_by(self, handler: Callable[..., Any] | str) -> list[Event[Any]]:
        """Events that ``handler`` (function or qualified name) handled successfully."""
        name = handler if isinstance(handler, str) else handler.__qualname__
        return [h.event for h in self._recorder.handled if h.handler == name]

    @property
    def failures(self) -> list[tuple[Message, Failure]]:
        """Every dead-lettered message with its failure, in order."""
        return list(self._recorder.failures)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter so far, with the failure in its headers."""
        return self.broker.dead_letters()
