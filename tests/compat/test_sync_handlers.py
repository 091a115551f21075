"""Issue 11 item 2: sync (``def``) handlers and dependencies, as the 0.10 documentation writes
them. They run in worker threads with the same retry and settle contract as async ones."""

import asyncio
import contextvars
import functools
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from dispytch import (
    ConfigurationError,
    Dependency,
    Event,
    EventListener,
    HandlerGroup,
    TopicSegment,
)
from dispytch.di import plan as plan_module
from dispytch.di import threads
from dispytch.di.plan import build_plan
from dispytch.events import Envelope
from dispytch.memory import MemoryBroker
from tests.helpers import wait_until
from tests.unit.support import RecordingConsumer, deliver, envelope, running


class UserCreated(BaseModel):
    user_id: int
    email: str


def _user(n: int) -> bytes:
    return envelope("user_created", {"user_id": n, "email": f"u{n}@example.com"}, id_=f"u{n}")


async def _deliver(group: HandlerGroup, payloads: list[bytes], topic: str = "users") -> Any:
    return await deliver(group, [(topic, payload) for payload in payloads])


# -- handlers -------------------------------------------------------------------------------------


async def test_a_def_handler_runs_in_a_worker_thread() -> None:
    seen: list[tuple[int, str]] = []
    loop_thread = threading.current_thread().name
    users = HandlerGroup()

    @users.handler(topic="users", event="user_created")
    def on_user_created(event: Event[UserCreated]) -> None:
        seen.append((event.body.user_id, threading.current_thread().name))

    consumer = await _deliver(users, [_user(1), _user(2)])
    assert sorted(n for n, _ in seen) == [1, 2]
    assert all(name != loop_thread and name.startswith("dispytch-sync") for _, name in seen)
    assert len(consumer.acked) == 2


async def test_a_blocking_def_handler_does_not_stall_the_loop() -> None:
    release = threading.Event()
    async_ran: list[int] = []
    users = HandlerGroup()

    @users.handler(topic="users", event="user_created")
    def blocking(event: Event[UserCreated]) -> None:
        assert release.wait(10), "never released"

    @users.handler(topic="audit", event="user_created")
    async def audit(event: Event[UserCreated]) -> None:
        async_ran.append(event.body.user_id)

    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer)
    listener.add_handler_group(users)
    async with running(listener):
        broker.publish("users", _user(1))
        broker.publish("audit", _user(2))
        # The audit event is handled while the sync handler is still blocked in its thread.
        await wait_until(lambda: async_ran == [2], timeout=5, what="the async handler")
        assert [m.topic for m in consumer.acked] == ["audit"]
        release.set()
        await wait_until(lambda: consumer.settled == 2, timeout=5, what="the sync handler")


async def test_retries_then_success_for_a_def_handler() -> None:
    attempts: list[int] = []
    users = HandlerGroup()

    @users.handler(topic="users", event="user_created", retries=2, retry_interval=0)
    def flaky(event: Event[UserCreated]) -> None:
        attempts.append(event.body.user_id)
        if len(attempts) < 3:
            raise ConnectionError("smtp down")

    consumer = await _deliver(users, [_user(7)])
    assert attempts == [7, 7, 7]
    assert len(consumer.acked) == 1 and consumer.dead == []


async def test_a_failing_def_handler_is_dead_lettered() -> None:
    users = HandlerGroup()

    @users.handler(topic="users", event="user_created", retries=1, retry_interval=0)
    def broken(event: Event[UserCreated]) -> None:
        raise ValueError(f"cannot welcome {event.body.email}")

    consumer = await _deliver(users, [_user(3)])
    ((_, failure),) = consumer.dead
    assert (failure.reason, failure.error_type, failure.attempts) == ("handler", "ValueError", 2)
    assert failure.error_message == "cannot welcome u3@example.com"
    assert failure.handler is not None and failure.handler.endswith("broken")


async def test_stop_iteration_from_a_def_handler_is_a_failure_not_a_hang() -> None:
    users = HandlerGroup()

    @users.handler(topic="users", event="user_created")
    def odd(event: Event[UserCreated]) -> None:
        raise StopIteration

    consumer = await _deliver(users, [_user(4)])
    assert [f.error_type for _, f in consumer.dead] == ["RuntimeError"]


async def test_def_handler_with_topic_segments_and_0_10_style_defaults() -> None:
    got: list[tuple[str, int]] = []
    tenants = HandlerGroup(default_topic="tenant:{tenant}:users", default_event="user_created")

    @tenants.handler()
    def on_user(event: Event[UserCreated], tenant: str = TopicSegment()) -> None:
        got.append((tenant, event.body.user_id))

    await _deliver(tenants, [_user(5)], topic="tenant:acme:users")
    assert got == [("acme", 5)]


async def test_a_def_wrapper_of_an_async_handler_runs_on_the_loop() -> None:
    threads_seen: list[str] = []

    def logged(func: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Awaitable[None]:
            return func(*args, **kwargs)

        return wrapper

    users = HandlerGroup()

    @users.handler(topic="users", event="user_created")
    @logged
    async def on_user(event: Event[UserCreated]) -> None:
        threads_seen.append(threading.current_thread().name)

    await _deliver(users, [_user(1)])
    assert threads_seen == [threading.current_thread().name]


async def test_a_def_handler_returning_an_awaitable_is_awaited() -> None:
    done: list[int] = []

    async def later(n: int) -> None:
        done.append(n)

    users = HandlerGroup()

    @users.handler(topic="users", event="user_created")
    def on_user(event: Event[UserCreated]) -> Awaitable[None]:
        return later(event.body.user_id)

    await _deliver(users, [_user(8)])
    assert done == [8]


# -- dependencies ---------------------------------------------------------------------------------


class Ledger:
    """Records which thread did what."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def note(self, what: str) -> None:
        self.log.append((what, threading.current_thread().name))


async def test_def_handler_with_sync_dependencies_runs_in_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger = Ledger()
    hops: list[object] = []
    real = plan_module.run_in_thread

    def counted(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return real(func, *args, **kwargs)

    monkeypatch.setattr(plan_module, "run_in_thread", counted)

    def get_db() -> Iterator[str]:
        ledger.note("db open")
        yield "db"
        ledger.note("db close")

    @contextmanager
    def get_mailer() -> Iterator[str]:
        ledger.note("mailer open")
        yield "mailer"
        ledger.note("mailer close")

    class UserService:
        def __init__(self, db: Annotated[str, Dependency(get_db)]) -> None:
            ledger.note("service")
            self.db = db

    users = HandlerGroup()

    @users.handler(topic="users", event="user_created")
    def on_user(
        event: Event[UserCreated],
        service: Annotated[UserService, Dependency()],
        mailer: Annotated[str, Dependency(get_mailer)],
    ) -> None:
        ledger.note(f"handler {service.db} {mailer}")

    await _deliver(users, [_user(1)])
    assert [what for what, _ in ledger.log] == [
        "db open",
        "service",
        "mailer open",
        "handler db mailer",
        "mailer close",
        "db close",
    ]
    # Setup, handler and teardown in one hop to one worker thread (thread-bound resources work).
    assert len(hops) == 1
    (name,) = {name for _, name in ledger.log}
    assert name.startswith("dispytch-sync")


async def test_async_handler_with_sync_dependencies_runs_them_off_the_loop() -> None:
    ledger = Ledger()
    loop_thread = threading.current_thread().name

    def get_db() -> Iterator[str]:
        ledger.note("db open")
        yield "db"
        ledger.note("db close")

    def settings() -> dict[str, str]:
        ledger.note("settings")
        return {"sender": "noreply@example.com"}

    users = HandlerGroup()

    @users.handler(topic="users", event="user_created")
    async def on_user(
        event: Event[UserCreated],
        db: Annotated[str, Dependency(get_db)],
        config: Annotated[dict[str, str], Dependency(settings)],
    ) -> None:
        ledger.note("handler")

    await _deliver(users, [_user(1)])
    assert [w for w, _ in ledger.log] == ["db open", "settings", "handler", "db close"]
    assert [n == loop_thread for _, n in ledger.log] == [False, False, True, False]


async def test_run_in_thread_false_keeps_a_cheap_dependency_on_the_loop() -> None:
    ledger = Ledger()
    loop_thread = threading.current_thread().name

    def settings() -> dict[str, str]:
        ledger.note("settings")
        return {}

    users = HandlerGroup()

    @users.handler(topic="users", event="user_created")
    def on_user(
        event: Event[UserCreated],
        config: Annotated[dict[str, str], Dependency(settings, run_in_thread=False)],
    ) -> None:
        ledger.note("handler")

    await _deliver(users, [_user(1)])
    assert ledger.log[0] == ("settings", loop_thread)
    assert ledger.log[1][0] == "handler" and ledger.log[1][1] != loop_thread


@pytest.mark.parametrize("handler_is_sync", [True, False])
async def test_sync_teardown_runs_on_failure_and_sees_it(handler_is_sync: bool) -> None:
    ledger = Ledger()

    @contextmanager
    def transaction() -> Iterator[str]:
        try:
            yield "tx"
        except ValueError:
            ledger.note("rollback")
            raise
        ledger.note("commit")

    users = HandlerGroup()

    if handler_is_sync:

        @users.handler(topic="users", event="user_created")
        def on_user(tx: Annotated[str, Dependency(transaction)]) -> None:
            raise ValueError("duplicate email")

    else:

        @users.handler(topic="users", event="user_created")
        async def on_user_async(tx: Annotated[str, Dependency(transaction)]) -> None:
            raise ValueError("duplicate email")

    consumer = await _deliver(users, [_user(1)])
    assert [w for w, _ in ledger.log] == ["rollback"]
    assert [f.error_type for _, f in consumer.dead] == ["ValueError"]


@pytest.mark.parametrize("handler_is_sync", [True, False])
async def test_a_generator_dependency_that_does_not_yield_fails_the_attempt(
    handler_is_sync: bool,
) -> None:
    def nothing() -> Iterator[str]:
        return
        yield "never"

    users = HandlerGroup()
    if handler_is_sync:

        @users.handler(topic="users", event="user_created")
        def on_user(x: Annotated[str, Dependency(nothing)]) -> None: ...

    else:

        @users.handler(topic="users", event="user_created")
        async def on_user_async(x: Annotated[str, Dependency(nothing)]) -> None: ...

    consumer = await _deliver(users, [_user(1)])
    ((_, failure),) = consumer.dead
    assert failure.error_type == "InvalidGeneratorError"
    assert "did not yield" in failure.error_message


async def fetch_quota() -> int:
    return 3


async def test_a_def_dependency_returning_a_coroutine_is_awaited_as_in_0_10() -> None:
    got: list[int] = []
    users = HandlerGroup()

    @users.handler(topic="users", event="user_created")
    async def on_user(quota: Annotated[int, Dependency(lambda: fetch_quota())]) -> None:
        got.append(quota)

    await _deliver(users, [_user(1)])
    assert got == [3]


async def test_a_def_handler_cannot_await_a_dependency_coroutine_and_says_so() -> None:
    users = HandlerGroup()

    @users.handler(topic="users", event="user_created")
    def on_user(quota: Annotated[int, Dependency(lambda: fetch_quota())]) -> None: ...

    consumer = await _deliver(users, [_user(1)])
    ((_, failure),) = consumer.dead
    assert "make the handler async def" in failure.error_message


# -- context variables ----------------------------------------------------------------------------

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_context_variables_reach_sync_code() -> None:
    seen: list[tuple[str, str]] = []

    def tagged() -> str:
        return REQUEST_ID.get()

    users = HandlerGroup()

    @users.handler(topic="users", event="user_created")
    def on_user(tag: Annotated[str, Dependency(tagged)]) -> None:
        seen.append((tag, REQUEST_ID.get()))
        REQUEST_ID.set("changed in the thread")  # a copy: not seen by the caller

    token = REQUEST_ID.set("req-42")
    try:
        await _deliver(users, [_user(1)])
        assert REQUEST_ID.get() == "req-42"
    finally:
        REQUEST_ID.reset(token)
    assert seen == [("req-42", "req-42")]


# -- timeouts, the pool ---------------------------------------------------------------------------


async def test_a_timed_out_sync_call_finishes_in_the_background() -> None:
    """A thread cannot be interrupted: the awaiting side gives up at once (a handler timeout
    fails the attempt) and the call completes later, its result dropped."""
    release, finished = threading.Event(), threading.Event()

    def slow(event: Event[UserCreated]) -> str:
        release.wait(10)
        finished.set()
        return "late"

    plan = build_plan(slow)
    events = plan.events(Envelope("u1", "user_created", {"user_id": 1, "email": "e"}, 1), "t")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await plan.start(events, [])
    assert not finished.is_set()
    release.set()
    await wait_until(finished.is_set, timeout=5, what="the call to finish")
    # The pool is still usable, and nothing was left pending on the loop.
    assert await plan.start(events, []) == "late"


async def test_the_pool_runs_at_most_max_threads_calls_at_once() -> None:
    pool = threads._Pool(2)
    running_now = [0]
    lock = threading.Lock()
    gate = threading.Event()

    def work(n: int) -> int:
        with lock:
            running_now[0] += 1
        gate.wait(10)
        return n

    calls = [pool.submit(work, (n,), {}) for n in range(6)]
    await wait_until(lambda: running_now[0] == 2, timeout=5, what="two calls running")
    # Each thread runs one call at a time: two threads, so the other four wait in the queue.
    assert pool._threads == 2
    gate.set()
    assert await asyncio.gather(*calls) == list(range(6))
    assert pool._threads == 2


async def test_lowering_max_threads_retires_surplus_threads() -> None:
    pool = threads._Pool(4)
    gate = threading.Event()
    calls = [pool.submit(gate.wait, (10,), {}) for _ in range(4)]
    await wait_until(lambda: pool._threads == 4, timeout=5, what="four threads")
    pool.limit = 1
    gate.set()
    await asyncio.gather(*calls)
    await wait_until(lambda: pool._threads == 1, timeout=5, what="three threads retired")
    assert await pool.submit(sum, ([1, 2],), {}) == 3


def test_the_default_pool_size() -> None:
    assert threads.max_threads() == threads.DEFAULT_MAX_THREADS == 64
    threads.set_max_threads(8)
    try:
        assert threads.max_threads() == 8
    finally:
        threads.set_max_threads(threads.DEFAULT_MAX_THREADS)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8"])
def test_max_threads_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        threads.set_max_threads(bad)


def test_a_stuck_sync_handler_does_not_hold_up_process_exit() -> None:
    script = textwrap.dedent(
        """
        import asyncio, threading
        from dispytch.di.threads import run_in_thread

        async def main():
            started = asyncio.get_running_loop().create_future()
            def stuck():
                started.get_loop().call_soon_threadsafe(started.set_result, None)
                threading.Event().wait()  # never returns
            run_in_thread(stuck)
            await started
            print("exiting", flush=True)

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "exiting"
