"""Markers that tell Dispytch where a handler parameter comes from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Dependency", "TopicSegment"]


class Dependency:
    """A value produced by ``func`` for each invocation, FastAPI style.

    ``func`` may be a sync or async function, a sync or async generator (code after ``yield``
    runs after the handler, on success and on failure), a ``@contextmanager`` /
    ``@asynccontextmanager`` function, or a class. Its own parameters are resolved the same way
    as a handler's. With ``use_cache=True`` (the default) one invocation calls ``func`` once,
    however many parameters ask for it.

    Use it as ``Annotated[T, Dependency(func)]`` or as a default: ``x: T = Dependency(func)``.
    ``Dependency()`` with no function calls the annotated type itself.

    Sync providers (``def`` functions and generators, ``@contextmanager`` functions, classes)
    run in a worker thread, teardown included, so a blocking one does not stall the event loop
    (see :mod:`dispytch.di.threads`). ``run_in_thread=False`` calls a cheap, non-blocking one
    directly on the loop instead, saving the thread hop (tens of microseconds). It changes
    nothing for async providers.
    """

    __slots__ = ("func", "run_in_thread", "use_cache")

    def __init__(
        self,
        func: Callable[..., Any] | None = None,
        *,
        use_cache: bool = True,
        run_in_thread: bool = True,
    ) -> None:
        self.func = func
        self.use_cache = use_cache
        self.run_in_thread = run_in_thread

    def __repr__(self) -> str:
        name = getattr(self.func, "__qualname__", repr(self.func))
        extra = "" if self.run_in_thread else ", run_in_thread=False"
        return f"Dependency({name}, use_cache={self.use_cache}{extra})"


class TopicSegment:
    """A value taken from a topic segment such as ``{user_id}`` in ``user:{user_id}:events``.

    Validated against the annotation, e.g. ``Annotated[int, TopicSegment(gt=0)]``; the bare
    class works too (``Annotated[int, TopicSegment]``), as does a default value
    (``user_id: int = TopicSegment()``). The segment name defaults to the parameter name;
    ``alias`` or ``validation_alias`` names another one (``validation_alias`` wins when both
    are given, as in Dispytch 0.10). Keyword constraints (``gt``, ``max_length``,
    ``pattern``...) are pydantic ``Field`` constraints.
    """

    __slots__ = ("alias", "constraints", "validation_alias")

    def __init__(
        self, alias: str | None = None, *, validation_alias: str | None = None, **constraints: Any
    ) -> None:
        self.validation_alias = validation_alias
        #: The segment name, if not the parameter's.
        self.alias = validation_alias or alias
        self.constraints = constraints

    def __repr__(self) -> str:
        return f"TopicSegment(alias={self.alias!r}, constraints={self.constraints!r})"
