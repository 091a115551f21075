"""Dependency injection: providers, sub-dependencies, caching, cleanup, overrides, and the errors
reported when a handler is registered."""

import functools
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from dispytch import (
    App,
    Dependency,
    DependencyCycleError,
    Event,
    EventBase,
    EventListener,
    HandlerGroup,
    PayloadValidationError,
    RegistrationError,
    TopicSegment,
)
from dispytch.di.plan import CallPlan, build_plan
from dispytch.events import Envelope
from dispytch.memory import MemoryBroker
from tests.helpers import wait_until
from tests.unit.support import RecordingConsumer, envelope, running


class Body(BaseModel):
    n: int


ENVELOPE = Envelope("evt-1", "created", {"n": 1}, 1)


async def call(
    handler: Any,
    *,
    overrides: dict[Any, Any] | None = None,
    segments: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    """Build the handler's plan and run it once, as the listener does for one event."""
    plan: CallPlan = build_plan(handler, frozenset(segments or ()), overrides)
    env = ENVELOPE if body is None else Envelope("evt-1", "created", body, 1)
    return await plan.run(plan.events(env, "topic"), plan.segment_values(segments or {}))


# -- provider kinds -------------------------------------------------------------------------------


class Providers:
    """One provider of every kind, logging setup and teardown."""

    def __init__(self) -> None:
        self.log: list[str] = []
        log = self.log

        def sync_fn() -> str:
            return "sync"

        async def async_fn() -> str:
            return "async"

        def gen() -> Iterator[str]:
            log.append("gen in")
            yield "gen"
            log.append("gen out")

        async def agen() -> AsyncIterator[str]:
            log.append("agen in")
            yield "agen"
            log.append("agen out")

        @contextmanager
        def cm() -> Iterator[str]:
            log.append("cm in")
            try:
                yield "cm"
            except ValueError:
                log.append("cm saw ValueError")
                raise
            log.append("cm out")

        @asynccontextmanager
        async def acm() -> AsyncIterator[str]:
            log.append("acm in")
            try:
                yield "acm"
            except ValueError:
                log.append("acm saw ValueError")
                raise
            log.append("acm out")

        class Klass:
            def __init__(self) -> None:
                self.value = "class"

        class Callable:
            async def __call__(self) -> str:
                return "instance"

        self.sync_fn, self.async_fn, self.gen, self.agen = sync_fn, async_fn, gen, agen
        self.cm, self.acm, self.Klass, self.instance = cm, acm, Klass, Callable()


async def test_every_provider_kind() -> None:
    p = Providers()

    async def handle(
        a: Annotated[str, Dependency(p.sync_fn)],
        b: Annotated[str, Dependency(p.async_fn)],
        c: Annotated[str, Dependency(p.gen)],
        d: Annotated[str, Dependency(p.agen)],
        e: Annotated[str, Dependency(p.cm)],
        f: Annotated[str, Dependency(p.acm)],
        g: Annotated[Any, Dependency(p.Klass)],
        h: Annotated[str, Dependency(p.instance)],
    ) -> list[str]:
        p.log.append("handler")
        return [a, b, c, d, e, f, g.value, h]

    result = await call(handle)
    assert result == ["sync", "async", "gen", "agen", "cm", "acm", "class", "instance"]
    # Teardown in reverse order of setup, after the handler.
    assert p.log == [
        "gen in",
        "agen in",
        "cm in",
        "acm in",
        "handler",
        "acm out",
        "cm out",
        "agen out",
        "gen out",
    ]


async def test_cleanup_runs_on_handler_failure_in_reverse_order() -> None:
    p = Providers()

    async def handle(
        c: Annotated[str, Dependency(p.gen)],
        d: Annotated[str, Dependency(p.agen)],
        e: Annotated[str, Dependency(p.cm)],
        f: Annotated[str, Dependency(p.acm)],
    ) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await call(handle)
    assert p.log == [
        "gen in",
        "agen in",
        "cm in",
        "acm in",
        "acm saw ValueError",  # context managers see the handler's error
        "cm saw ValueError",
        "agen out",  # generators resume normally: code after yield always runs
        "gen out",
    ]


async def test_cleanup_runs_when_a_later_dependency_fails_to_set_up() -> None:
    p = Providers()
    handled = False

    def broken() -> str:
        raise RuntimeError("no connection")

    async def handle(
        c: Annotated[str, Dependency(p.gen)], x: Annotated[str, Dependency(broken)]
    ) -> None:
        nonlocal handled
        handled = True

    with pytest.raises(RuntimeError, match="no connection"):
        await call(handle)
    assert not handled
    assert p.log == ["gen in", "gen out"]


async def test_teardown_error_after_success_fails_the_call() -> None:
    log: list[str] = []

    def first() -> Iterator[str]:
        yield "a"
        log.append("first out")

    def failing() -> Iterator[str]:
        yield "b"
        raise OSError("could not commit")

    async def handle(
        a: Annotated[str, Dependency(first)], b: Annotated[str, Dependency(failing)]
    ) -> None: ...

    with pytest.raises(OSError, match="could not commit"):
        await call(handle)
    assert log == ["first out"]  # the other teardowns still ran


async def test_teardown_error_after_failure_keeps_the_handler_error() -> None:
    def failing() -> Iterator[str]:
        yield "b"
        raise OSError("teardown")

    async def handle(b: Annotated[str, Dependency(failing)]) -> None:
        raise ValueError("handler")

    with pytest.raises(ValueError, match="handler"):
        await call(handle)


async def test_generator_that_yields_twice_is_reported() -> None:
    def twice() -> Iterator[int]:
        yield 1
        yield 2

    async def handle(x: Annotated[int, Dependency(twice)]) -> None: ...

    with pytest.raises(RegistrationError, match="yielded twice"):
        await call(handle)


async def test_class_and_dataclass_providers_take_sub_dependencies() -> None:
    def settings() -> dict[str, str]:
        return {"dsn": "db://x"}

    class Database:
        def __init__(self, cfg: Annotated[dict[str, str], Dependency(settings)]) -> None:
            self.dsn = cfg["dsn"]

    @dataclass
    class Repo:
        db: Annotated[Database, Dependency()]
        table: str = "users"

    async def handle(repo: Annotated[Repo, Dependency()]) -> tuple[str, str]:
        return repo.db.dsn, repo.table

    assert await call(handle) == ("db://x", "users")


async def test_partial_of_an_async_function_is_awaited() -> None:
    async def scaled(factor: int, event: Event[Body]) -> int:
        return event.body.n * factor

    async def handle(x: Annotated[int, Dependency(functools.partial(scaled, 10))]) -> int:
        return x

    assert await call(handle) == 10


# -- sub-dependencies and what they can ask for ---------------------------------------------------


async def test_sub_dependencies_get_the_event_segments_and_constants() -> None:
    def user_id(event: Event[Body], tenant: Annotated[str, TopicSegment()]) -> str:
        return f"{tenant}/{event.body.n}"

    async def greeting(uid: Annotated[str, Dependency(user_id)], prefix: str = "hi") -> str:
        return f"{prefix} {uid}"

    async def handle(text: Annotated[str, Dependency(greeting)], event: Event[Body]) -> str:
        return f"{text} ({event.id})"

    assert await call(handle, segments={"tenant": "acme"}) == "hi acme/1 (evt-1)"


async def test_event_body_kinds() -> None:
    class Model(EventBase):
        __event_type__ = "created"
        n: int

    async def handle(
        raw: Event,  # type: ignore[type-arg]
        as_dict: Event[dict[str, Any]],
        typed: Event[Body],
        model: Event[Model],
    ) -> tuple[Any, ...]:
        return raw.body, as_dict.body, typed.body, model.body.id, model.body.n

    assert await call(handle) == ({"n": 1}, {"n": 1}, Body(n=1), "evt-1", 1)


async def test_body_that_does_not_match_the_model_is_a_payload_validation_error() -> None:
    async def handle(event: Event[Body]) -> None: ...

    plan = build_plan(handle)
    with pytest.raises(PayloadValidationError, match="does not match Body"):
        plan.events(Envelope("e", "created", {"n": "not a number"}, 1), "topic")


# -- caching --------------------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.calls


async def test_cached_dependency_is_called_once_per_invocation() -> None:
    counter = Counter()

    def doubled(n: Annotated[int, Dependency(counter)]) -> int:
        return n * 2

    async def handle(
        a: Annotated[int, Dependency(counter)],
        b: int = Dependency(counter),
        c: Annotated[int, Dependency(doubled)] = 0,
    ) -> tuple[int, int, int]:
        return a, b, c

    plan = build_plan(handle)
    events = plan.events(ENVELOPE, "topic")
    assert await plan.run(events, []) == (1, 1, 2)
    assert counter.calls == 1
    assert await plan.run(events, []) == (2, 2, 4)  # a new invocation calls it again
    assert counter.calls == 2


async def test_uncached_dependency_is_called_each_time() -> None:
    counter = Counter()

    def doubled(n: Annotated[int, Dependency(counter, use_cache=False)]) -> int:
        return n * 2

    async def handle(
        a: Annotated[int, Dependency(counter, use_cache=False)],
        b: Annotated[int, Dependency(counter, use_cache=False)],
        c: Annotated[int, Dependency(doubled)],
    ) -> tuple[int, int, int]:
        return a, b, c

    assert await call(handle) == (1, 2, 6)
    assert counter.calls == 3


async def test_cached_generator_is_entered_and_closed_once() -> None:
    log: list[str] = []

    def session() -> Iterator[str]:
        log.append("open")
        yield "s"
        log.append("close")

    def repo(s: Annotated[str, Dependency(session)]) -> str:
        return f"repo({s})"

    async def handle(
        s: Annotated[str, Dependency(session)], r: Annotated[str, Dependency(repo)]
    ) -> str:
        return f"{s} {r}"

    assert await call(handle) == "s repo(s)"
    assert log == ["open", "close"]


async def test_diamond_is_not_a_cycle() -> None:
    counter = Counter()

    def left(n: Annotated[int, Dependency(counter)]) -> int:
        return n

    def right(n: Annotated[int, Dependency(counter)]) -> int:
        return n

    async def handle(
        a: Annotated[int, Dependency(left)], b: Annotated[int, Dependency(right)]
    ) -> int:
        return a + b

    assert await call(handle) == 2
    assert counter.calls == 1


# -- marker styles --------------------------------------------------------------------------------


class Service:
    def __init__(self) -> None:
        self.name = "service"


def make_service() -> Service:
    return Service()


async def test_annotated_and_default_value_styles() -> None:
    async def handle(
        a: Annotated[Service, Dependency(make_service)],
        b: Service = Dependency(make_service, use_cache=False),  # noqa: B008
        c: Annotated[Service, Dependency()] = None,  # type: ignore[assignment]
        d: Service = Dependency(),  # noqa: B008
    ) -> list[Any]:
        return [a, b, c, d]

    a, b, c, d = await call(handle)
    assert all(isinstance(s, Service) for s in (a, b, c, d))
    assert a is not b  # use_cache=False gives its own instance


# -- overrides ------------------------------------------------------------------------------------


def get_db() -> str:
    return "real db"


def get_repo(db: Annotated[str, Dependency(get_db)]) -> str:
    return f"repo on {db}"


async def repo_handler(repo: Annotated[str, Dependency(get_repo)]) -> str:
    return repo


async def test_override_of_a_sub_dependency() -> None:
    assert await call(repo_handler) == "repo on real db"
    assert await call(repo_handler, overrides={get_db: lambda: "fake db"}) == "repo on fake db"


async def test_override_with_its_own_dependencies() -> None:
    def fake_repo(db: Annotated[str, Dependency(get_db)], event: Event[Body]) -> str:
        return f"fake repo on {db} for {event.body.n}"

    assert await call(repo_handler, overrides={get_repo: fake_repo}) == "fake repo on real db for 1"


async def test_listener_dependency_overrides() -> None:
    got: list[str] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="created")
    async def handle(repo: Annotated[str, Dependency(get_repo)]) -> None:
        got.append(repo)

    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer, dependency_overrides={get_db: lambda: "test db"})
    listener.add_handler_group(group)
    async with running(listener):
        broker.publish("orders", envelope("created", {"n": 1}))
        await wait_until(lambda: len(consumer.acked) == 1, timeout=5, what="ack")
    assert got == ["repo on test db"]


async def test_app_dependency_overrides() -> None:
    got: list[str] = []
    app = App(f"memory://unit-di-{uuid.uuid4().hex}", shutdown_timeout=5)
    app.dependency_overrides[get_db] = lambda: "app test db"

    class Created(EventBase):
        __topic__ = "orders"
        __event_type__ = "created"
        n: int

    @app.handler(topic="orders", event="created")
    async def handle(repo: Annotated[str, Dependency(get_repo)]) -> None:
        got.append(repo)

    async with app:
        await app.emit(Created(n=1))
        await wait_until(lambda: len(got) == 1, timeout=5, what="handled")
    assert got == ["repo on app test db"]


async def test_each_retry_attempt_gets_fresh_dependencies_and_cleanup() -> None:
    log: list[str] = []
    calls = 0

    def session() -> Iterator[int]:
        log.append("open")
        yield len(log)
        log.append("close")

    group = HandlerGroup()

    @group.handler(topic="orders", event="created", retries=2, retry_interval=0)
    async def handle(s: Annotated[int, Dependency(session)]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("always")

    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer)
    listener.add_handler_group(group)
    async with running(listener):
        broker.publish("orders", envelope("created", {"n": 1}))
        await wait_until(lambda: len(consumer.acked) == 1, timeout=5, what="settle")
    assert calls == 3
    assert log == ["open", "close"] * 3
    assert [f.reason for _, f in consumer.dead] == ["handler"]


# -- cycles ---------------------------------------------------------------------------------------


def _cycle_a(b: "Annotated[int, Dependency(_cycle_b)]") -> int:
    return b


def _cycle_b(a: "Annotated[int, Dependency(_cycle_a)]") -> int:
    return a


def _self_cycle(x: "Annotated[int, Dependency(_self_cycle, use_cache=False)]") -> int:
    return x


def test_cycle_is_reported_at_registration_with_the_chain() -> None:
    group = HandlerGroup()
    with pytest.raises(DependencyCycleError) as info:

        @group.handler(topic="t", event="e")
        async def handle(x: Annotated[int, Dependency(_cycle_a)]) -> None: ...

    assert "dependency cycle: _cycle_a -> _cycle_b -> _cycle_a" in str(info.value)
    assert isinstance(info.value, RegistrationError)
    assert group.handlers == []


def test_uncached_self_cycle_is_reported() -> None:
    async def handle(x: Annotated[int, Dependency(_self_cycle)]) -> None: ...

    with pytest.raises(DependencyCycleError, match="_self_cycle -> _self_cycle"):
        build_plan(handle)


# -- invalid signatures ---------------------------------------------------------------------------


class NotAModel:
    pass


def _register(func: Any) -> None:
    HandlerGroup().handler(topic="t", event="e")(func)


def test_event_of_a_non_model_is_refused() -> None:
    async def handle(event: Event[NotAModel]) -> None: ...

    with pytest.raises(RegistrationError, match=r"Event\[NotAModel\] is not supported.*BaseModel"):
        _register(handle)


def test_event_of_int_is_refused() -> None:
    async def handle(event: Event[int]) -> None: ...

    with pytest.raises(RegistrationError, match=r"Event\[int\] is not supported"):
        _register(handle)


def test_parameter_without_source_is_refused() -> None:
    async def handle(event: Event[Body], mystery: int) -> None: ...

    with pytest.raises(RegistrationError, match=r"parameter 'mystery' has no source; annotate"):
        _register(handle)


def test_parameter_without_source_in_a_dependency_names_the_path() -> None:
    def provider(mystery: str) -> str:
        return mystery

    async def handle(x: Annotated[str, Dependency(provider)]) -> None: ...

    with pytest.raises(RegistrationError, match=r"dependency .*provider: parameter 'mystery'"):
        _register(handle)


def test_var_positional_is_refused() -> None:
    async def handle(*args: Any) -> None: ...

    with pytest.raises(RegistrationError, match="parameter 'args' is variadic positional"):
        _register(handle)


def test_var_keyword_is_refused() -> None:
    async def handle(event: Event[Body], **kwargs: Any) -> None: ...

    with pytest.raises(RegistrationError, match="parameter 'kwargs' is variadic keyword"):
        _register(handle)


def test_positional_only_is_refused() -> None:
    async def handle(event: Event[Body], /) -> None: ...

    with pytest.raises(RegistrationError, match="positional-only"):
        _register(handle)


def test_async_generator_handler_is_refused() -> None:
    async def handle(event: Event[Body]) -> AsyncIterator[None]:
        yield None

    with pytest.raises(RegistrationError, match="must be an 'async def' or 'def' function"):
        _register(handle)


def test_generator_handler_is_refused() -> None:
    def handle(event: Event[Body]) -> Iterator[None]:
        yield None

    with pytest.raises(RegistrationError, match="not a generator or context manager"):
        _register(handle)


def test_class_handler_is_refused() -> None:
    class Handle:
        def __init__(self, event: Event[Body]) -> None: ...

    with pytest.raises(RegistrationError, match="not a class"):
        _register(Handle)


def test_two_markers_on_one_parameter_are_refused() -> None:
    async def handle(x: Annotated[int, Dependency(make_service)] = Dependency(get_db)) -> None: ...

    with pytest.raises(RegistrationError, match="has 2 markers; give it one"):
        _register(handle)


def test_dependency_without_function_or_annotation_is_refused() -> None:
    async def handle(x=Dependency()) -> None: ...  # type: ignore[no-untyped-def]  # noqa: B008

    with pytest.raises(RegistrationError, match=r"Dependency\(\) without a function"):
        _register(handle)


def test_unresolvable_annotation_is_refused() -> None:
    async def handle(x: "DoesNotExist") -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(RegistrationError, match="cannot resolve its type annotations"):
        _register(handle)
