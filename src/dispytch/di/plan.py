"""Call plans: a handler's dependency tree, inspected once at registration, run per event.

:func:`build_plan` reads signatures, detects cycles and invalid parameters, and flattens the tree
into an ordered list of steps. :meth:`CallPlan.run` then only calls functions: no reflection on
the per-message path.

Sync code (a ``def`` handler, a ``def`` / generator / ``@contextmanager`` / class dependency)
runs in a worker thread (:mod:`dispytch.di.threads`), teardown included, unless its
``Dependency`` says ``run_in_thread=False``. A sync handler whose dependencies are all sync and
threaded runs with them in one thread hop: setup, handler and teardown in the same thread.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from dispytch.di.context import EventHandlerContext
from dispytch.di.markers import Dependency, TopicSegment
from dispytch.di.threads import run_in_thread
from dispytch.errors import (
    DependencyCycleError,
    InvalidGeneratorError,
    PayloadValidationError,
    RegistrationError,
)
from dispytch.events import Envelope, Event, EventBase

__all__ = ["CallPlan", "build_plan"]

logger = logging.getLogger("dispytch.di")

#: Keyword parameters of pydantic's Field (its ``**extra`` catch-all excluded).
_FIELD_KEYWORDS = frozenset(
    name
    for name, param in inspect.signature(Field).parameters.items()
    if param.kind is not inspect.Parameter.VAR_KEYWORD
)


class _Kind(Enum):
    SYNC = 1
    ASYNC = 2
    GEN = 3
    ASYNC_GEN = 4
    CM = 5
    ASYNC_CM = 6


# A source says where one argument comes from: (kind, payload).
_EVENT = 0  # payload: index into the plan's body models
_SEGMENT = 1  # payload: index into the plan's segment validators
_STEP = 2  # payload: index of an earlier step's result
_CONST = 3  # payload: the value


#: Kinds of sync code, which runs in a worker thread unless told otherwise.
_SYNC_KINDS = frozenset({_Kind.SYNC, _Kind.GEN, _Kind.CM})


@dataclass(slots=True)
class _Step:
    func: Callable[..., Any]
    kind: _Kind
    args: tuple[tuple[str, int, Any], ...]
    threaded: bool = False  # sync code, run in a worker thread


@dataclass(slots=True)
class _Segment:
    name: str  # placeholder name in the topic
    adapter: TypeAdapter[Any]
    where: str  # for error messages


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


def _kind_of(func: Callable[..., Any]) -> _Kind:
    plain = inspect.isroutine(func) or inspect.isclass(func)
    target = func if plain else func.__call__  # type: ignore[operator]
    # Checking ``func`` too sees through functools.partial; ``target`` covers callable instances.
    if inspect.isasyncgenfunction(func) or inspect.isasyncgenfunction(target):
        return _Kind.ASYNC_GEN
    if inspect.isgeneratorfunction(func) or inspect.isgeneratorfunction(target):
        return _Kind.GEN
    if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(target):
        return _Kind.ASYNC
    wrapped = getattr(func, "__wrapped__", None)
    if wrapped is not None and not inspect.isclass(func):
        # @contextmanager / @asynccontextmanager keep the generator function as __wrapped__.
        if inspect.isasyncgenfunction(wrapped):
            return _Kind.ASYNC_CM
        if inspect.isgeneratorfunction(wrapped):
            return _Kind.CM
        # A plain def decorator around an async function (functools.wraps): it returns a
        # coroutine, so call it on the loop and await that, as for an async function.
        try:
            if inspect.iscoroutinefunction(inspect.unwrap(func)):
                return _Kind.ASYNC
        except ValueError:  # a __wrapped__ cycle
            pass
    return _Kind.SYNC


def _body_type(annotation: Any, where: str) -> Any:
    """The body type of an ``Event[...]`` annotation, or ``None`` if it is not one."""
    if annotation is Event:
        return dict
    if get_origin(annotation) is not Event:
        return None
    (arg,) = get_args(annotation)
    if arg is dict or arg is Any or get_origin(arg) is dict:
        return dict
    if isinstance(arg, type) and issubclass(arg, BaseModel):
        return arg
    raise RegistrationError(
        f"{where}: Event[{getattr(arg, '__name__', arg)!s}] is not supported; the body type "
        "must be a pydantic BaseModel subclass (or dict for the raw body)"
    )


class CallPlan:
    """A handler with its dependency tree flattened into steps."""

    __slots__ = (
        "_direct",
        "_has_cleanup",
        "_one_hop",
        "_sync",
        "_validators",
        "bodies",
        "func",
        "handler_args",
        "name",
        "segments",
        "steps",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        steps: list[_Step],
        handler_args: tuple[tuple[str, int, Any], ...],
        bodies: list[Any],
        segments: list[_Segment],
    ) -> None:
        self.func = func
        self.name = _name(func)
        self.steps = steps
        self.handler_args = handler_args
        self.bodies = bodies
        self.segments = segments
        self._has_cleanup = any(s.kind not in (_Kind.SYNC, _Kind.ASYNC) for s in steps)
        #: A ``def`` handler: called in a worker thread.
        self._sync = _kind_of(func) is _Kind.SYNC
        #: A ``def`` handler whose dependencies are all threaded sync code: one thread hop.
        self._one_hop = self._sync and all(s.threaded for s in steps)
        #: An async handler whose only parameter is the first event: its name.
        self._direct: str | None = None
        if not steps and not self._sync and len(handler_args) == 1:
            name, source, payload = handler_args[0]
            if source == _EVENT and payload == 0:
                self._direct = name
        # Bound validators, resolved once: (validate or None for a raw dict, needs id, name).
        self._validators: list[tuple[Callable[[Any], Any] | None, bool, str]] = [
            (None, False, "dict")
            if model is dict
            else (
                model.__pydantic_validator__.validate_python,
                issubclass(model, EventBase),
                model.__name__,
            )
            for model in bodies
        ]

    def events(
        self, envelope: Envelope, topic: str, headers: Mapping[str, str] | None = None
    ) -> list[Event[Any]]:
        """Validate the body once per body type this plan needs. Raises PayloadValidationError."""
        out: list[Event[Any]] = []
        for validate, needs_id, name in self._validators:
            body: Any = envelope.body
            if validate is not None:
                if needs_id and "id" not in body:
                    body = {**body, "id": envelope.id}
                try:
                    body = validate(body)
                except ValidationError as exc:
                    raise PayloadValidationError(
                        f"body of {envelope.type!r} event {envelope.id} does not match "
                        f"{name}: {_short(exc)}"
                    ) from None
            out.append(Event(envelope.id, envelope.type, topic, body, envelope.timestamp, headers))
        return out

    def segment_values(self, raw: Mapping[str, str]) -> list[Any]:
        values: list[Any] = []
        for seg in self.segments:
            try:
                values.append(seg.adapter.validate_python(raw[seg.name]))
            except ValidationError as exc:
                raise PayloadValidationError(
                    f"topic segment {{{seg.name}}}={raw[seg.name]!r} is invalid for {seg.where}: "
                    f"{_short(exc)}"
                ) from None
        return values

    def start(self, events: list[Event[Any]], segments: list[Any]) -> Awaitable[Any]:
        """What :meth:`run` does, as an awaitable: an async handler without dependencies is
        called directly (one coroutine less per message on the hot path)."""
        direct = self._direct
        if direct is not None:  # the handler's one parameter is the event (most handlers)
            return self.func(**{direct: events[0]})  # type: ignore[no-any-return]
        if not self.steps and not self._sync:
            return self.func(**_kwargs(self.handler_args, events, segments, []))  # type: ignore[no-any-return]
        return self.run(events, segments)

    async def run(self, events: list[Event[Any]], segments: list[Any]) -> Any:
        """Resolve the dependencies and call the handler once."""
        if self._one_hop:
            result = await run_in_thread(self._run_sync, events, segments)
        elif self._has_cleanup:
            result = await self._run_with_cleanup(events, segments)
        else:
            results: list[Any] = []
            for step in self.steps:
                kwargs = _kwargs(step.args, events, segments, results)
                if step.kind is _Kind.ASYNC:
                    results.append(await step.func(**kwargs))
                else:
                    value = (
                        await run_in_thread(step.func, **kwargs)
                        if step.threaded
                        else step.func(**kwargs)
                    )
                    # A def returning an awaitable (a lambda around an async function), as
                    # 0.10 allowed: await what it returned.
                    results.append(await value if inspect.isawaitable(value) else value)
            kwargs = _kwargs(self.handler_args, events, segments, results)
            if not self._sync:
                return await self.func(**kwargs)
            result = await run_in_thread(self.func, **kwargs)
        # A def handler may return an awaitable (a wrapper around an async function).
        return await result if self._sync and inspect.isawaitable(result) else result

    def _call_handler(
        self, events: list[Event[Any]], segments: list[Any], results: list[Any]
    ) -> Awaitable[Any]:
        kwargs = _kwargs(self.handler_args, events, segments, results)
        if self._sync:
            return run_in_thread(self.func, **kwargs)
        return self.func(**kwargs)  # type: ignore[no-any-return]

    async def _run_with_cleanup(self, events: list[Event[Any]], segments: list[Any]) -> Any:
        results: list[Any] = []
        cleanups: list[tuple[Any, bool]] = []  # (generator or context manager, threaded)
        try:
            for step in self.steps:
                kwargs = _kwargs(step.args, events, segments, results)
                kind = step.kind
                if kind is _Kind.ASYNC:
                    results.append(await step.func(**kwargs))
                elif kind is _Kind.ASYNC_GEN:
                    agen = step.func(**kwargs)
                    try:
                        results.append(await agen.__anext__())
                    except StopAsyncIteration:
                        raise _no_yield(step.func) from None
                    cleanups.append((agen, False))
                elif kind is _Kind.ASYNC_CM:
                    acm: AbstractAsyncContextManager[Any] = step.func(**kwargs)
                    results.append(await acm.__aenter__())
                    cleanups.append((acm, False))
                else:
                    if step.threaded:
                        value, item = await run_in_thread(_enter, step, kwargs)
                    else:
                        value, item = _enter(step, kwargs)
                    results.append(await value if inspect.isawaitable(value) else value)
                    if item is not None:
                        cleanups.append((item, step.threaded))
            result = await self._call_handler(events, segments, results)
        except BaseException as exc:
            await _cleanup(cleanups, exc)
            raise
        await _cleanup(cleanups, None)
        return result

    def _run_sync(self, events: list[Event[Any]], segments: list[Any]) -> Any:
        """The whole plan of a def handler with threaded sync dependencies: in one thread."""
        results: list[Any] = []
        cleanups: list[Any] = []
        try:
            for step in self.steps:
                value, item = _enter(step, _kwargs(step.args, events, segments, results))
                if item is not None:
                    cleanups.append(item)
                if inspect.isawaitable(value):
                    _discard(value)
                    raise RegistrationError(
                        f"dependency {_name(step.func)} returned an awaitable to the def handler "
                        f"{self.name}, which runs in a worker thread and cannot await it; make "
                        "the handler async def, or the dependency async def"
                    )
                results.append(value)
            result = self.func(**_kwargs(self.handler_args, events, segments, results))
        except BaseException as exc:
            _cleanup_sync(cleanups, exc)
            raise
        _cleanup_sync(cleanups, None)
        return result


def _kwargs(
    args: tuple[tuple[str, int, Any], ...],
    events: list[Event[Any]],
    segments: list[Any],
    results: list[Any],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, source, payload in args:
        if source == _STEP:
            out[name] = results[payload]
        elif source == _EVENT:
            out[name] = events[payload]
        elif source == _SEGMENT:
            out[name] = segments[payload]
        else:
            out[name] = payload
    return out


def _discard(awaitable: Any) -> None:
    """Close a coroutine that will never be awaited (no 'never awaited' warning)."""
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


def _no_yield(func: Callable[..., Any]) -> InvalidGeneratorError:
    return InvalidGeneratorError(f"dependency generator {_name(func)} did not yield; yield once")


def _enter(step: _Step, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Set up one sync dependency: its value, and what to tear down after (or ``None``)."""
    if step.kind is _Kind.SYNC:
        return step.func(**kwargs), None
    if step.kind is _Kind.GEN:
        gen = step.func(**kwargs)
        try:
            return next(gen), gen
        except StopIteration:
            raise _no_yield(step.func) from None
    cm: AbstractContextManager[Any] = step.func(**kwargs)
    return cm.__enter__(), cm


def _close(item: Any, error: BaseException | None) -> None:
    """Tear down one sync generator (resumed normally) or context manager (sees the error)."""
    if inspect.isgenerator(item):
        try:
            next(item)
        except StopIteration:
            return
        raise InvalidGeneratorError(
            f"dependency generator {item.__qualname__} yielded twice; yield once"
        )
    item.__exit__(*_exc_info(error))


async def _aclose(item: Any, error: BaseException | None) -> None:
    if inspect.isasyncgen(item):
        try:
            await item.__anext__()
        except StopAsyncIteration:
            return
        raise InvalidGeneratorError(
            f"dependency generator {item.__qualname__} yielded twice; yield once"
        )
    await item.__aexit__(*_exc_info(error))


def _exc_info(error: BaseException | None) -> tuple[Any, Any, Any]:
    return (type(error), error, error.__traceback__) if error else (None, None, None)


class _TeardownErrors:
    """Teardown runs every step however many fail. After a successful handler the first
    teardown error fails the attempt; the others (and all of them after a failure) are logged."""

    __slots__ = ("error", "first")

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.first: Exception | None = None

    def add(self, exc: Exception) -> None:
        if self.error is None and self.first is None:
            self.first = exc
        else:
            logger.error("dependency teardown failed: %s: %s", type(exc).__name__, exc)

    def raise_first(self) -> None:
        if self.first is not None:
            raise self.first


async def _cleanup(cleanups: list[tuple[Any, bool]], error: BaseException | None) -> None:
    """Run teardown in reverse order, sync items in a worker thread when they were set up in
    one. Generators resume normally, so code after ``yield`` always runs; context managers see
    the error. A teardown error after success fails the attempt."""
    errors = _TeardownErrors(error)
    for item, threaded in reversed(cleanups):
        try:
            if inspect.isasyncgen(item) or isinstance(item, AbstractAsyncContextManager):
                await _aclose(item, error)
            elif threaded:
                await run_in_thread(_close, item, error)
            else:
                _close(item, error)
        except Exception as exc:
            errors.add(exc)
    errors.raise_first()


def _cleanup_sync(cleanups: list[Any], error: BaseException | None) -> None:
    """:func:`_cleanup` for a plan that runs entirely in one worker thread."""
    errors = _TeardownErrors(error)
    for item in reversed(cleanups):
        try:
            _close(item, error)
        except Exception as exc:
            errors.add(exc)
    errors.raise_first()


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "value"
        parts.append(f"{loc}: {err.get('msg')}")
    more = exc.error_count() - 3
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


class _Builder:
    def __init__(
        self, segment_names: frozenset[str], overrides: Mapping[Callable[..., Any], Any]
    ) -> None:
        self.segment_names = segment_names
        self.overrides = overrides
        self.steps: list[_Step] = []
        self.cached: dict[Any, int] = {}
        self.bodies: list[Any] = []
        self.segments: list[_Segment] = []
        self.visiting: list[Any] = []

    def params(self, func: Callable[..., Any], where: str) -> tuple[tuple[str, int, Any], ...]:
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            raise RegistrationError(f"{where}: cannot read its signature ({exc})") from None
        try:
            if inspect.isclass(func):
                target: Any = func.__init__
            elif isinstance(func, functools.partial):
                target = func.func  # its signature drops the bound arguments; hints stay valid
            elif inspect.isroutine(func):
                target = func
            else:  # a callable instance: its __call__ holds the annotations
                target = type(func).__call__
            hints = get_type_hints(target, include_extras=True)
        except Exception as exc:
            raise RegistrationError(
                f"{where}: cannot resolve its type annotations ({type(exc).__name__}: {exc}); "
                "make every annotation importable where the function is defined"
            ) from None
        args: list[tuple[str, int, Any]] = []
        for name, param in sig.parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise RegistrationError(
                    f"{where}: parameter {name!r} is {param.kind.description}; handlers and "
                    "dependencies take named parameters only"
                )
            args.append((name, *self.source(name, param, hints.get(name, param.annotation), where)))
        return tuple(args)

    def source(
        self, name: str, param: inspect.Parameter, annotation: Any, where: str
    ) -> tuple[int, Any]:
        base, metadata = annotation, ()
        if get_origin(annotation) is Annotated:
            base, *rest = get_args(annotation)
            metadata = tuple(rest)
        markers = [
            TopicSegment() if m is TopicSegment else m  # the bare class, as 0.10 allowed
            for m in (*metadata, param.default)
            if m is TopicSegment or isinstance(m, Dependency | TopicSegment)
        ]
        if len(markers) > 1:
            raise RegistrationError(
                f"{where}: parameter {name!r} has {len(markers)} markers; give it one"
            )
        marker = markers[0] if markers else None
        if isinstance(marker, Dependency):
            func = marker.func if marker.func is not None else base
            if not callable(func) or func is inspect.Parameter.empty:
                raise RegistrationError(
                    f"{where}: parameter {name!r} has Dependency() without a function and no "
                    "callable annotation; write Dependency(provider)"
                )
            return _STEP, self.step(
                func, marker.use_cache, f"{where} -> {name}", marker.run_in_thread
            )
        if isinstance(marker, TopicSegment):
            return _SEGMENT, self.segment(name, base, metadata, marker, where)
        body = _body_type(base, f"{where}, parameter {name!r}")
        if body is not None:
            if body not in self.bodies:
                self.bodies.append(body)
            return _EVENT, self.bodies.index(body)
        if param.default is not inspect.Parameter.empty:
            return _CONST, param.default
        if base is EventHandlerContext:
            raise RegistrationError(
                f"{where}: parameter {name!r} asks for Dispytch 0.10's EventHandlerContext, "
                "which is not injected any more; take what it carried directly: "
                "event: Event[Model] for the event, Annotated[T, TopicSegment()] for topic values"
            )
        raise RegistrationError(
            f"{where}: parameter {name!r} has no source; annotate it as Event[Model], "
            f"Annotated[T, Dependency(provider)] or Annotated[T, TopicSegment()], or give it "
            "a default value"
        )

    def segment(
        self, name: str, base: Any, metadata: tuple[Any, ...], marker: TopicSegment, where: str
    ) -> int:
        seg_name = marker.alias or name
        if not isinstance(seg_name, str):
            raise RegistrationError(
                f"{where}: parameter {name!r}: TopicSegment alias must be a segment name (str), "
                f"got {seg_name!r}"
            )
        if seg_name not in self.segment_names:
            known = ", ".join(sorted(self.segment_names)) or "none"
            raise RegistrationError(
                f"{where}: parameter {name!r} wants topic segment {{{seg_name}}}, but the "
                f"handler's topic has no such placeholder (it has: {known}); fix the topic or "
                "set TopicSegment(alias=...)"
            )
        extra = [m for m in metadata if not (m is TopicSegment or isinstance(m, TopicSegment))]
        if marker.constraints:
            # Field() only warns about unknown keywords, so a typo (gtt=0) would silently
            # validate nothing: refuse names Field does not take.
            unknown = sorted(set(marker.constraints) - _FIELD_KEYWORDS)
            if unknown:
                raise RegistrationError(
                    f"{where}: parameter {name!r}: unknown TopicSegment constraint(s) {unknown}; "
                    "use pydantic Field constraints such as gt, ge, lt, le, min_length, "
                    "max_length, pattern"
                )
            try:
                extra.append(Field(**marker.constraints))
            except TypeError as exc:
                raise RegistrationError(f"{where}: bad TopicSegment constraint: {exc}") from None
        if base is inspect.Parameter.empty:
            base = str
        target: Any = Annotated[(base, *extra)] if extra else base
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(target)
        except Exception as exc:
            raise RegistrationError(f"{where}: parameter {name!r}: {exc}") from None
        self.segments.append(_Segment(seg_name, adapter, f"{where}, parameter {name!r}"))
        return len(self.segments) - 1

    def step(
        self, func: Callable[..., Any], use_cache: bool, where: str, run_in_thread: bool = True
    ) -> int:
        func = self.overrides.get(func, func)
        if use_cache and func in self.cached:
            return self.cached[func]
        if func in self.visiting:
            chain = " -> ".join(
                _name(f) for f in [*self.visiting[self.visiting.index(func) :], func]
            )
            raise DependencyCycleError(
                f"dependency cycle: {chain}; break it by removing one of these dependencies"
            )
        self.visiting.append(func)
        try:
            args = self.params(func, f"dependency {_name(func)}")
        finally:
            self.visiting.pop()
        kind = _kind_of(func)
        self.steps.append(_Step(func, kind, args, run_in_thread and kind in _SYNC_KINDS))
        index = len(self.steps) - 1
        if use_cache:
            self.cached[func] = index
        return index


def build_plan(
    func: Callable[..., Any],
    segment_names: frozenset[str] = frozenset(),
    overrides: Mapping[Callable[..., Any], Any] | None = None,
) -> CallPlan:
    """Inspect a handler and its dependencies once; raise RegistrationError on any misuse."""
    kind = _kind_of(func) if callable(func) else None
    if kind not in (_Kind.ASYNC, _Kind.SYNC) or inspect.isclass(func):
        raise RegistrationError(
            f"handler {_name(func)} must be an 'async def' or 'def' function, not a "
            f"{'class' if inspect.isclass(func) else 'generator or context manager'}"
        )
    builder = _Builder(segment_names, overrides or {})
    handler_args = builder.params(func, f"handler {_name(func)}")
    return CallPlan(func, builder.steps, handler_args, builder.bodies, builder.segments)
