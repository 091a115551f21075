"""Losing and regaining the connection: the errors that mean it, the backoff, the log lines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dispytch.backoff import Backoff

__all__ = [
    "CONNECTION_ERRORS",
    "Reconnection",
    "outage_level",
    "pause",
    "stop_reader",
]

#: Exceptions that mean the connection is lost (or too slow to tell), not that Redis refused.
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


#: The first wait after a lost connection; the waits double from there up to the cap.
FIRST_RECONNECT_DELAY = 0.05


def outage_level(failures: int) -> int:
    """One warning per outage (and every tenth attempt), not one per attempt."""
    return logging.WARNING if failures == 1 or failures % 10 == 0 else logging.DEBUG


async def pause(stopped: asyncio.Event, delay: float) -> None:
    """Wait ``delay`` seconds, or less if ``stopped`` is set meanwhile."""
    try:
        async with asyncio.timeout(delay):
            await stopped.wait()
    except TimeoutError:
        pass


async def stop_reader(
    reader: asyncio.Task[None] | None, wake: Callable[[], Awaitable[None]], timeout: float
) -> None:
    """Stop a reader task whose closing flag is set: ``wake`` it from a blocking read,
    wait up to ``timeout`` seconds for it to end, and cancel it only if it did not."""
    if reader is None or reader.done():
        return
    await wake()
    # Cancelling a task blocked in a redis-py read is what we avoid, so it is only the last resort.
    done, _ = await asyncio.wait({reader}, timeout=timeout)
    if not done:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


class Reconnection:
    """Failed attempts in a row of a reader's connection: the wait before the next one, and a
    log line per failure (``"<what> connection lost (...); reconnecting in 0.05s (attempt 1)"``).

    Args:
        logger: where the lines go.
        what: names the connection in the lines (``"Redis Pub/Sub"``).
        max_delay: cap of the wait between attempts, in seconds.
        consequence: appended to each line (what the outage costs the user).
        warn_every_attempt: log every failure as a warning, not only the first of an outage
            (and every tenth).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        max_delay: float,
        *,
        consequence: str = "",
        warn_every_attempt: bool = False,
    ) -> None:
        self.logger = logger
        self._backoff = Backoff(FIRST_RECONNECT_DELAY, max_delay)
        self._warn_always = warn_every_attempt
        self._format = f"{what} connection %s (%s: %s); reconnecting in %.2fs (attempt %d)"
        self._format += consequence.replace("%", "%%")

    @property
    def failures(self) -> int:
        """Failed attempts in a row (0 while connected)."""
        return self._backoff.failures

    def failed(self, exc: BaseException) -> float:
        """Count a failure, log it; return the seconds to wait before the next attempt."""
        delay = self._backoff.failed()
        level = logging.WARNING if self._warn_always else outage_level(self.failures)
        self.logger.log(
            level,
            self._format,
            "lost" if self.failures == 1 else "still down",
            type(exc).__name__,
            exc,
            delay,
            self.failures,
        )
        return delay

    def succeeded(self) -> int:
        """The connection is back: return how many attempts failed before, and reset."""
        return self._backoff.succeeded()
