"""Health of a running app: what :meth:`App.health() <dispytch.app.App.health>` reports and what
the ``/readyz`` probe decides on.

Nothing here runs per message. The listener counts the messages it settled (one integer);
:class:`Monitor` asks the broker every ``interval`` seconds how far behind the consumer is
(:meth:`Consumer.lag() <dispytch.listener.consumer.Consumer.lag>`). A question the broker does
not answer within the interval means *not connected*; the answer is the lag reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dispytch.untrusted import loggable

if TYPE_CHECKING:
    from dispytch.listener.listener import EventListener

__all__ = ["Health", "Monitor", "assess"]

logger = logging.getLogger("dispytch.health")


@dataclass(frozen=True, slots=True)
class Health:
    """A snapshot of an app's health (:meth:`App.health() <dispytch.app.App.health>`).

    Attributes:
        started: the app is started and not stopped.
        listening: the app's listener runs (``False`` for an app without handlers).
        subscribed: the consumer made its subscriptions (``False`` without handlers).
        connected: the broker answered the last check; ``None`` while nothing was checked
            yet, for an app without handlers, or with checks turned off.
        in_flight: messages fetched and not yet settled.
        last_progress: ``time.time()`` when the listener was last seen settling a message
            (``None``: not yet).
        lag: messages waiting in the broker for this consumer group, per topic, stream or
            queue, as the broker reports it (``None``: unknown, or a broker that keeps no
            backlog: Redis Pub/Sub, core NATS).
        checked_at: ``time.time()`` of the last broker check (``None``: none yet).
        reason: why the app is not ready (``None`` when it is).
    """

    started: bool
    listening: bool
    subscribed: bool
    connected: bool | None
    in_flight: int
    last_progress: float | None
    lag: Mapping[str, int] | None
    checked_at: float | None
    reason: str | None

    @property
    def ready(self) -> bool:
        """Started, listening (when it has handlers), connected, and making progress when
        there is work: what ``/readyz`` answers 200 for."""
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data (``ready`` included)."""
        data = asdict(self)
        data["lag"] = dict(self.lag) if self.lag is not None else None
        data["ready"] = self.ready
        return data


class Monitor:
    """Checks the broker and watches the listener's progress for one app.

    ``lag()`` is called every ``interval`` seconds, bounded by ``interval`` (at least one
    second) each time. ``redact`` removes secrets from the error text kept for ``reason``.
    """

    def __init__(
        self,
        listener: EventListener,
        interval: float | None,
        *,
        stall_timeout: float,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.listener = listener
        self.interval = interval
        self.stall_timeout = stall_timeout
        self._redact = redact
        self.connected: bool | None = None
        self.error: str | None = None
        self.lag: Mapping[str, int] | None = None
        self.checked_at: float | None = None
        self.last_progress: float | None = None
        self._since = time.time()
        self._seen = listener.settled
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the checks in the background (once; only with an interval and a loop)."""
        if self._task is not None or self.interval is None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(self.interval), name="dispytch-health"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, interval: float) -> None:
        while True:
            await self.check(max(interval, 1.0))
            await asyncio.sleep(interval)

    async def check(self, timeout: float) -> None:
        """Ask the broker once; note the answer, or that it gave none."""
        try:
            async with asyncio.timeout(timeout):
                lag = await self.listener.lag()
        except Exception as exc:
            text = str(exc) or "no answer"
            if isinstance(exc, TimeoutError):
                text = f"no answer within {timeout:g}s"
            error = loggable(self._redact(f"{type(exc).__name__}: {text}"))
            if self.connected is not False:
                logger.warning("the broker does not answer the health check: %s", error)
            self.connected, self.error = False, error
        else:
            if self.connected is False:
                logger.info("the broker answers the health check again")
            self.connected, self.error, self.lag = True, None, lag
        self.checked_at = time.time()
        self.progress()

    def progress(self) -> float | None:
        """``last_progress``, moved to now if the listener settled messages since last seen."""
        settled = self.listener.settled
        if settled != self._seen:
            self._seen = settled
            self.last_progress = time.time()
        return self.last_progress

    def stalled(self, in_flight: int, now: float) -> str | None:
        """Why the listener looks stuck: work waits and nothing settled for ``stall_timeout``."""
        waiting = sum(self.lag.values()) if self.lag else 0
        if not in_flight and not waiting:
            return None
        quiet = now - (self.last_progress or self._since)
        if quiet < self.stall_timeout:
            return None
        return (
            f"no message settled for {quiet:.0f}s with {in_flight} in flight and "
            f"{waiting} waiting in the broker"
        )


def assess(
    *,
    started: bool,
    listener: EventListener | None,
    listener_running: bool,
    monitor: Monitor | None,
) -> Health:
    """The :class:`Health` of an app from its parts (:meth:`App.health` gathers them)."""
    now = time.time()
    in_flight = listener.in_flight if listener is not None else 0
    subscribed = listener is not None and listener.subscribed
    connected = monitor.connected if monitor is not None else None
    last_progress = monitor.progress() if monitor is not None else None
    reason: str | None = None
    if not started:
        reason = "not started"
    elif listener is not None and not listener_running:
        reason = "the listener stopped"
    elif listener is not None and not subscribed:
        reason = "not subscribed yet"
    elif monitor is not None and connected is False:
        reason = f"the broker does not answer ({monitor.error})"
    elif monitor is not None:
        reason = monitor.stalled(in_flight, now)
    return Health(
        started=started,
        listening=listener_running,
        subscribed=subscribed,
        connected=connected,
        in_flight=in_flight,
        last_progress=last_progress,
        lag=monitor.lag if monitor is not None else None,
        checked_at=monitor.checked_at if monitor is not None else None,
        reason=reason,
    )
