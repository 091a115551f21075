"""Scheduling: the fetch loop, backpressure, key lanes, the worker pool, and the drain.

* At most ``concurrency`` messages, and about ``max_buffer_bytes`` of payload, are held
  (fetched and not yet settled) at once: the next fetch waits for room. A single message larger
  than the byte bound still goes through, alone.
* Messages that share an ordering key run one at a time in arrival order, each key in a lane
  (a task) of its own; unkeyed messages go to a pool of long-lived workers.
* On stop, in-flight work gets ``shutdown_timeout`` seconds; then it is cancelled, and tasks
  that ignore the cancellation get ``shutdown_grace`` seconds more before they are abandoned:
  their messages are never acknowledged, the consumer's close hands them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Literal

from dispytch.seam import Message

__all__ = ["Ordering", "Scheduler"]

logger = logging.getLogger("dispytch.listener")

Ordering = Literal["key", "partition", "none"]

#: Seconds cancelled work gets at least, whatever ``shutdown_grace`` says.
MIN_GRACE = 0.1


class Scheduler:
    """Feeds fetched messages to ``process`` under the concurrency, byte and ordering rules."""

    def __init__(
        self,
        process: Callable[[Message], Awaitable[None]],
        hand_back: Callable[[Message], Awaitable[None]],
        *,
        concurrency: int,
        ordering: Ordering,
        max_buffer_bytes: int | None,
        shutdown_grace: float,
    ) -> None:
        self.process = process
        self.hand_back = hand_back
        self.concurrency = concurrency
        self.ordering = ordering
        self.max_buffer_bytes = sys.maxsize if max_buffer_bytes is None else max_buffer_bytes
        self.shutdown_grace = shutdown_grace
        #: messages fetched and not yet settled, and the bytes of their payloads
        self.held = 0
        self.held_bytes = 0
        #: messages settled (or handed back) so far: health reads it to see progress
        self.released = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._keys: dict[Hashable, deque[Message]] = {}
        self._ready: deque[Message] = deque()
        self._idle: list[asyncio.Future[bool]] = []
        self._workers = 0
        #: workers woken (or spawned) that have not yet looked at the ready queue
        self._waking = 0
        # Set while the fetch loop waits for room; _release wakes it.
        self._room: asyncio.Future[None] | None = None
        self._settled: asyncio.Event | None = None
        self._closing = False
        self._fetching: asyncio.Task[Any] | None = None

    # -- fetching -----------------------------------------------------------------------------

    async def fetch(self, stream: AsyncIterator[Message]) -> None:
        """Take messages from ``stream`` while there is room, until it ends or is cancelled."""
        self._fetching = asyncio.current_task()
        limit = self.concurrency
        max_bytes = self.max_buffer_bytes
        loop = asyncio.get_running_loop()
        ordering = self.ordering
        ready = self._ready
        try:
            while True:
                held = self.held
                # Backpressure: fetch only with a free slot and room in the byte budget (an
                # oversized message goes through when nothing else is held).
                if held >= limit or (held and self.held_bytes >= max_bytes):
                    self._room = room = loop.create_future()
                    try:
                        await room
                    finally:
                        self._room = None
                    continue
                try:
                    message = await anext(stream)
                except StopAsyncIteration:
                    return
                self.held += 1  # not held + 1: work may have settled while we waited
                self.held_bytes += len(message.payload)
                if ordering == "key":
                    key: Hashable | None = message.key
                elif ordering == "partition":
                    key = (message.topic, message.partition)
                else:
                    key = None
                if key is None:
                    # Unkeyed work goes to a pool of long-lived workers: no task per message.
                    ready.append(message)
                    if not self._waking:
                        self._wake(False)
                    continue
                queued = self._keys.get(key)
                if queued is not None:
                    queued.append(message)
                else:
                    self._keys[key] = deque()
                    self._spawn(self._run_key(key, message))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def _wake(self, busy: bool) -> bool:
        """Get one more worker on its way to the ready queue: an idle one, or a new one while
        there are fewer than ``concurrency``. ``busy``: the waker went on to run a handler.
        Whether one is on its way."""
        idle = self._idle
        while idle:
            waiter = idle.pop()
            if not waiter.done():
                waiter.set_result(busy)
                self._waking += 1
                return True
        if self._workers < self.concurrency and not self._closing:
            self._workers += 1
            self._waking += 1
            self._spawn(self._worker(busy))
            return True
        return False

    async def _worker(self, busy: bool) -> None:
        # Workers wake one another in a chain: fetching wakes one, and a worker that takes a
        # message while more are ready wakes the next before it runs its handler. Handlers
        # that never wait run back to back in one worker: no task switch per message. A
        # worker woken that way that still finds work ready knows every other worker waits
        # in a handler: it starts workers for all of that work at once (up to concurrency).
        ready = self._ready
        process = self.process
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._waking -= 1  # this worker, on its way, has arrived
                if busy:
                    while len(ready) > self._waking + 1 and self._wake(True):
                        pass
                while ready and not self._closing:
                    message = ready.popleft()
                    if ready and not self._waking:
                        self._wake(True)
                    try:
                        await process(message)
                    finally:
                        self._release(message)
                if self._closing:  # work that swallowed its cancellation ends here
                    return
                waiter: asyncio.Future[bool] = loop.create_future()
                self._idle.append(waiter)
                try:
                    busy = await waiter
                except asyncio.CancelledError:
                    if waiter.done() and not waiter.cancelled():
                        self._waking -= 1  # woken, then cancelled before it could arrive
                    raise
        finally:
            self._workers -= 1

    async def _run_key(self, key: Hashable, message: Message) -> None:
        queued = self._keys[key]
        process = self.process
        current: Message | None = message
        try:
            while current is not None:
                try:
                    await process(current)
                finally:
                    self._release(current)
                current = queued.popleft() if queued and not self._closing else None
        finally:
            # Messages still queued (cancelled, or stopping) stay for the drain to hand back.
            if not queued:
                self._keys.pop(key, None)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("listener task failed", exc_info=task.exception())

    def _release(self, message: Message) -> None:
        self.released += 1
        self.held -= 1
        self.held_bytes -= len(message.payload)
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)
        if not self.held and self._settled is not None:
            self._settled.set()

    # -- stopping -----------------------------------------------------------------------------

    def halt(self) -> None:
        """Start no more work: what is queued stays for the drain to hand back."""
        self._closing = True
        fetching = self._fetching
        if fetching is not None and not fetching.done():
            fetching.cancel()

    async def drain(
        self, timeout: float, before_cancel: Callable[[], None] = lambda: None
    ) -> tuple[int, bool]:
        """Wait up to ``timeout`` s for held work to settle, then cancel what is left and give
        it ``shutdown_grace`` s; hand back what never started. ``before_cancel`` runs between
        the two (the listener closes its ack gate there).

        Returns the number of tasks that ignored cancellation (abandoned, still running) and
        whether this coroutine was itself cancelled meanwhile (the caller re-raises that once
        the drain is done: a drain is never cut short, it is bounded by its timeouts).
        """
        interrupted = False
        if self.held and timeout > 0:
            if self._settled is None:
                self._settled = asyncio.Event()
            logger.info("waiting up to %.1fs for %d in-flight messages", timeout, self.held)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled.wait(), timeout)
            except asyncio.CancelledError:
                interrupted = True
        if self.held:
            logger.warning(
                "%d messages not finished at shutdown; handing them back unacknowledged",
                self.held,
            )
        before_cancel()
        self._closing = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        stuck = 0
        if tasks:
            pending: set[asyncio.Task[None]] = set()
            try:
                # Even with no grace, cancelled work gets a moment to run its clean-up.
                grace = max(self.shutdown_grace, MIN_GRACE)
                _, pending = await asyncio.wait(tasks, timeout=grace)
            except asyncio.CancelledError:
                interrupted = True
                pending = {task for task in tasks if not task.done()}
            stuck = len(pending)
            if stuck:
                logger.error(
                    "%d handler task(s) ignored cancellation for %.1fs after the shutdown "
                    "timeout; abandoning them: their messages are handed back, never "
                    "acknowledged. Let asyncio.CancelledError propagate in handlers",
                    stuck,
                    self.shutdown_grace,
                )
        leftovers = list(self._ready)
        self._ready.clear()
        for pending_messages in self._keys.values():
            leftovers.extend(pending_messages)
        self._keys.clear()
        for message in leftovers:
            await self.hand_back(message)
            self._release(message)
        return stuck, interrupted
