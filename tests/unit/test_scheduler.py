"""The scheduler's worker pool: how many workers a backlog wakes (the concurrency bound under
work that waits is in test_listener.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from dispytch.listener.scheduler import Scheduler
from dispytch.seam import Message

from .support import wait_until


async def _backlog(n: int) -> AsyncIterator[Message]:
    """A stream that never waits: the whole backlog is ready at once."""
    for i in range(n):
        yield Message("orders", b"{}", offset=i)


async def _run(scheduler: Scheduler, n: int, done: list[int]) -> int:
    """Process a backlog of ``n``; the number of worker tasks it started."""
    fetching = asyncio.create_task(scheduler.fetch(_backlog(n)))
    try:
        await wait_until(lambda: len(done) == n, timeout=10, what="backlog processed")
        return len(scheduler._tasks)
    finally:
        scheduler.halt()
        await scheduler.drain(1)
        await asyncio.gather(fetching, return_exceptions=True)


def _scheduler(process: object, concurrency: int = 8) -> Scheduler:
    async def hand_back(message: Message) -> None:
        raise AssertionError("nothing is handed back")

    return Scheduler(
        process,  # type: ignore[arg-type]
        hand_back,
        concurrency=concurrency,
        ordering="none",
        max_buffer_bytes=None,
        shutdown_grace=1,
    )


async def test_work_that_never_waits_runs_back_to_back_without_a_task_switch_per_message() -> None:
    switches = 0
    last: asyncio.Task[object] | None = None
    done: list[int] = []

    async def process(message: Message) -> None:
        nonlocal switches, last
        task = asyncio.current_task()
        if task is not last:
            switches += 1
            last = task
        assert message.offset is not None
        done.append(message.offset)

    workers = await _run(_scheduler(process), 400, done)
    assert sorted(done) == list(range(400))
    # One worker runs each batch of up to 8 (the concurrency) to its end, and wakes one more in
    # case its work waits: 2 workers, not one per message held.
    assert workers <= 2
    assert switches <= 400 // 8 * 2
