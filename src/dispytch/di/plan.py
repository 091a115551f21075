"""Call plans: a handler's dependency tree, inspected once at registration, run per event.

:func:`build_plan` reads signatures, detects cycles and invalid parameters, and flattens the tree
into an ordered list of steps. :meth:`CallPlan.run` then only calls functions: no reflection on
the per-message path.
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

from dispytch.di.markers import Dependency, TopicSegment
from dispytch.errors import DependencyCycleError, PayloadValidationError, RegistrationError
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


@dataclass(slots=True)
class _Step:
    func: Callable[..., Any]
    kind: _Kind
    args: tuple[tuple[str, int, Any], ...]


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
        "_has_cleanup",
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

    def events(self, envelope: Envelope, topic: str) -> list[Event[Any]]:
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
            out.append(Event(envelope.id, envelope.type, topic, body, envelope.timestamp))
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
        """What :meth:`run` does, as an awaitable: a handler without dependencies is called
        directly (one coroutine less per message on the hot path)."""
        if not self.steps:
            return self.func(**_kwargs(self.handler_args, events, segments, []))  # type: ignore[no-any-return]
        return self.run(events, segments)

    async def run(self, events: list[Event[Any]], segments: list[Any]) -> Any:
        """Resolve the dependencies and call the handler once."""
        results: list[Any] = []
        if not self._has_cleanup:
            for step in self.steps:
                kwargs = _kwargs(step.args, events, segments, results)
                if step.kind is _Kind.SYNC:
                    results.append(step.func(**kwargs))
                else:
                    results.append(await step.func(**kwargs))
            return await self.func(**_kwargs(self.handler_args, events, segments, results))
        cleanups: list[Any] = []
        try:
            for step in self.steps:
                results.append(await self._call(step, events, segments, results, cleanups))
            result = await self.func(**_kwargs(self.handler_args, events, segments, results))
        except BaseException as exc:
            await _cleanup(cleanups, exc)
            raise
        await _cleanup(cleanups, None)
        return result

    @staticmethod
    async def _call(
        step: _Step,
        events: list[Event[Any]],
        segments: list[Any],
        results: list[Any],
        cleanups: list[Any] | None,
    ) -> Any:
        kwargs = _kwargs(step.args, events, segments, results)
        kind = step.kind
        if kind is _Kind.SYNC:
            return step.func(**kwargs)
        if kind is _Kind.ASYNC:
            return await step.func(**kwargs)
        assert cleanups is not None  # steps with cleanup set _has_cleanup
        if kind is _Kind.GEN:
            gen = step.func(**kwargs)
            value = next(gen)
            cleanups.append(gen)
            return value
        if kind is _Kind.ASYNC_GEN:
            agen = step.func(**kwargs)
            value = await agen.__anext__()
            cleanups.append(agen)
            return value
        if kind is _Kind.CM:
            cm: AbstractContextManager[Any] = step.func(**kwargs)
            value = cm.__enter__()
            cleanups.append(cm)
            return value
        acm: AbstractAsyncContextManager[Any] = step.func(**kwargs)
        value = await acm.__aenter__()
        cleanups.append(acm)
        return value


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


async def _cleanup(cleanups: list[Any], error: BaseException | None) -> None:
    """Run teardown in reverse order. Generators resume normally, so code after ``yield`` always
    runs; context managers see the error. A teardown error after success fails the attempt."""
    first: BaseException | None = None
    for item in reversed(cleanups):
        try:
            if inspect.isgenerator(item):
                try:
                    next(item)
                except StopIteration:
                    pass
                else:
                    raise RegistrationError(
                        f"dependency generator {item.__qualname__} yielded twice; yield once"
                    )
            elif inspect.isasyncgen(item):
                try:
                    await item.__anext__()
                except StopAsyncIteration:
                    pass
                else:
                    raise RegistrationError(
                        f"dependency generator {item.__qualname__} yielded twice; yield once"
                    )
            elif isinstance(item, AbstractAsyncContextManager):
                exc_info = (type(error), error, error.__traceback__) if error else (None,) * 3
                await item.__aexit__(*exc_info)
            else:
                exc_info = (type(error), error, error.__traceback__) if error else (None,) * 3
                item.__exit__(*exc_info)
        except Exception as exc:
            if error is None and first is None:
                first = exc
            else:
                logger.error("dependency teardown failed: %s: %s", type(exc).__name__, exc)
    if first is not None:
        raise first


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
            return _STEP, self.step(func, marker.use_cache, f"{where} -> {name}")
        if isinstance(marker, TopicSegment):
            return _SEGMENT, self.segment(name, base, metadata, marker, where)
        body = _body_type(base, f"{where}, parameter {name!r}")
        if body is not None:
            if body not in self.bodies:
                self.bodies.append(body)
            return _EVENT, self.bodies.index(body)
        if param.default is not inspect.Parameter.empty:
            return _CONST, param.default
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

    def step(self, func: Callable[..., Any], use_cache: bool, where: str) -> int:
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
        self.steps.append(_Step(func, _kind_of(func), args))
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
    if not inspect.iscoroutinefunction(func):
        raise RegistrationError(
            f"handler {_name(func)} must be an 'async def' function, got {type(func).__name__}"
        )
    builder = _Builder(segment_names, overrides or {})
    handler_args = builder.params(func, f"handler {_name(func)}")
    return CallPlan(func, builder.steps, handler_args, builder.bodies, builder.segments)
