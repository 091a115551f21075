"""Worker threads for sync handlers and sync dependencies, as FastAPI runs sync path operations.

A ``def`` handler or dependency may block (a database driver, ``requests``, a file): run on the
event loop it would stall every other message. So it runs in a worker thread while the loop
goes on, with the caller's context variables (a copy, as ``asyncio.to_thread`` does: values it
sets are not seen by the caller).

One pool per process, shared by every listener: at most :func:`max_threads` threads (64 by
default, the default listener concurrency, so a default listener never waits for a thread),
started when first needed and kept. Calls beyond that wait in a queue. The threads are daemon
threads: one still stuck in a call when the process exits does not hold the exit up. A call
cannot be interrupted: when its awaiting side is cancelled (a handler timeout, a shutdown) the
attempt ends at once and the thread finishes the call in the background, its result dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_MAX_THREADS", "max_threads", "run_in_thread", "set_max_threads"]

#: Threads the pool starts at most, unless :func:`set_max_threads` says otherwise.
DEFAULT_MAX_THREADS = 64


class _Inbox:
    """Results for one event loop. Worker threads append; the loop is woken (a write to its
    self-pipe) only when the inbox was empty, so a busy loop collects many results per wake-up."""

    __slots__ = ("_lock", "_loop", "_results", "_woken")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._results: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._lock = threading.Lock()
        self._woken = False

    def put(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        self._results.append((future, result, error))
        with self._lock:
            if self._woken:
                return
            self._woken = True
        # RuntimeError: the loop closed while the call ran, nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            self._woken = False
        results = self._results
        while results:
            future, result, error = results.popleft()
            if future.done():  # cancelled: the attempt timed out or the listener stopped
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)


_Call = tuple[
    _Inbox,
    "asyncio.Future[Any]",
    contextvars.Context,
    Callable[..., Any],
    tuple[Any, ...],
    dict[str, Any],
]


class _Pool:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        #: The inbox of the loop that submitted last (nearly always the only one).
        self._last: tuple[asyncio.AbstractEventLoop, _Inbox] | None = None

    def submit(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is None or last[0] is not loop:
            last = self._last = (loop, _Inbox(loop))
        inbox = last[1]
        future = loop.create_future()
        self._calls.put((inbox, future, contextvars.copy_context(), func, args, kwargs))
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread takes this call
                return future
            if self._threads >= self.limit:
                return future  # queued for the next thread that is free
            self._threads += 1
        thread = threading.Thread(
            target=self._work, name=f"dispytch-sync-{self._threads}", daemon=True
        )
        thread.start()
        return future

    def _work(self) -> None:
        calls = self._calls
        while True:
            _call(*calls.get())
            with self._lock:
                if self._threads > self.limit:  # the limit was lowered: retire
                    self._threads -= 1
                    return
                self._idle += 1


def _call(
    inbox: _Inbox,
    future: asyncio.Future[Any],
    context: contextvars.Context,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    try:
        result = context.run(func, *args, **kwargs)
    except StopIteration as exc:  # a future refuses it, as a coroutine does: say what it was
        error = RuntimeError(f"{getattr(func, '__qualname__', func)} raised StopIteration")
        error.__cause__ = exc
        inbox.put(future, None, error)
    except BaseException as exc:  # handed to the awaiting side, whatever it is
        inbox.put(future, None, exc)
    else:
        inbox.put(future, result, None)


_pool = _Pool(DEFAULT_MAX_THREADS)


def run_in_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
    """Call ``func(*args, **kwargs)`` in a worker thread; await the result on the loop."""
    return _pool.submit(func, args, kwargs)


def max_threads() -> int:
    """How many worker threads the pool starts at most."""
    return _pool.limit


def set_max_threads(limit: int) -> None:
    """Let the pool run up to ``limit`` threads. Raising it takes effect at once; lowering it
    retires surplus threads as they finish their current or next call."""
    from dispytch.errors import ConfigurationError

    if not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"max threads must be an int >= 1, got {limit!r}")
    _pool.limit = limit
