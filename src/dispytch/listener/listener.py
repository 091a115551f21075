"""The listener: fetch, decode, route, run handlers with retries, settle. I/O only via a Consumer.

Delivery contract kept here, once for every backend:

* a message is acked only after every matching handler succeeded (or none matched);
* a permanent failure (retries exhausted, undecodable bytes, invalid body or topic segment) is
  dead-lettered with failure details, then acked;
* work cut short by shutdown is nacked (handed back), never acked;
* at most ``concurrency`` messages are held at once (the next fetch waits for a free slot), and
  messages sharing an ordering key run one at a time in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Literal, Protocol, TypeVar

from dispytch.emitter.producer import Producer
from dispytch.errors import DecodeError, ListenerError, PayloadValidationError, RegistrationError
from dispytch.events import Envelope, Event
from dispytch.handler import HandlerGroup, HandlerSpec
from dispytch.listener.consumer import Consumer, Failure, Message
from dispytch.routing import RouteTable, TopicPattern
from dispytch.serialization.deserializer import Deserializer
from dispytch.serialization.json import JSONDeserializer
from dispytch.topic_rules import GENERIC, TopicRules, check_segments

__all__ = ["EventListener", "ListenerObserver", "Ordering"]

logger = logging.getLogger("dispytch.listener")

Ordering = Literal["key", "partition", "none"]
F = TypeVar("F", bound=Callable[..., Any])


class ListenerObserver(Protocol):
    """Hooks for tests and metrics; called on the listener's task, keep them cheap."""

    def on_handled(self, handler: str, event: Event[Any]) -> None: ...

    def on_dead_letter(self, message: Message, failure: Failure) -> None: ...


#: Distinct (topic, event type) pairs whose handler lists are memoised before the memo resets.
_MATCH_CACHE_SIZE = 4096


def _as_async(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    if inspect.iscoroutinefunction(func):
        return func

    async def call(*args: Any) -> Any:
        result = func(*args)
        if inspect.isawaitable(result):
            return await result
        return result

    return call


def _now_ms() -> int:
    return int(time.time() * 1000)


class EventListener:
    """Consumes messages from ``consumer`` and dispatches them to registered handlers.

    Args:
        consumer: the backend consumer (``listen()`` and ``ack()`` at least).
        deserializer: decodes message bytes; JSON by default.
        topic_delimiter: separates topic segments for patterns like ``user:{user_id}:events``.
        concurrency: how many messages are held at once; fetching waits for a free slot.
        ordering: ``"key"`` runs messages that share a key one at a time (unkeyed ones in
            parallel); ``"partition"`` serialises each partition or queue; ``"none"`` never waits.
        shutdown_timeout: seconds in-flight work gets to finish on stop before it is handed back.
        dead_letter_producer: where permanent failures go when the consumer has no dead-letter
            destination of its own; ``dead_letter_topic`` names the destination
            (``{topic}`` is the original topic).
        max_deliveries: a message the broker delivered more often than this (the process died
            while handling it each time) is dead-lettered without running handlers again.
        topic_rules: what a captured ``{segment}`` may hold (the backend's rules; by default
            the generic ones split at ``topic_delimiter``); a message whose segment breaks
            them is dead-lettered as a validation failure.
    """

    def __init__(
        self,
        consumer: Consumer,
        deserializer: Deserializer | None = None,
        topic_delimiter: str = ":",
        *,
        concurrency: int = 64,
        ordering: Ordering = "key",
        shutdown_timeout: float = 30.0,
        dead_letter_producer: Producer | None = None,
        dead_letter_topic: str = "{topic}.dlq",
        max_deliveries: int = 10,
        observer: ListenerObserver | None = None,
        dependency_overrides: Mapping[Callable[..., Any], Any] | None = None,
        topic_rules: TopicRules | None = None,
    ) -> None:
        if concurrency < 1:
            raise RegistrationError(f"concurrency must be >= 1, got {concurrency}")
        if ordering not in ("key", "partition", "none"):
            raise RegistrationError(f"ordering must be 'key', 'partition' or 'none': {ordering!r}")
        if "{topic}" not in dead_letter_topic:
            raise RegistrationError("dead_letter_topic must contain '{topic}', e.g. '{topic}.dlq'")
        self.consumer = consumer
        self.deserializer = deserializer or JSONDeserializer()
        self.topic_delimiter = topic_delimiter
        self.topic_rules = topic_rules or GENERIC.with_delimiter(topic_delimiter)
        self.concurrency = concurrency
        self.ordering = ordering
        self.shutdown_timeout = shutdown_timeout
        self.dead_letter_producer = dead_letter_producer
        self.dead_letter_topic = dead_letter_topic
        self.max_deliveries = max_deliveries
        self.observer = observer
        self.dependency_overrides = dependency_overrides
        self._own = HandlerGroup()
        self._own._checks.append(self._check)
        self._groups: list[HandlerGroup] = [self._own]
        #: Register a handler on this listener itself; see :meth:`HandlerGroup.handler`.
        self.handler = self._own.handler
        self._routes: RouteTable[HandlerSpec] | None = None
        self._ack = _as_async(consumer.ack)
        self._nack = _as_async(getattr(consumer, "nack", None) or (lambda m: None))
        dead_letter = getattr(consumer, "dead_letter", None)
        self._consumer_dead_letter = _as_async(dead_letter) if dead_letter else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._keys: dict[Hashable, deque[Message]] = {}
        # Set while the fetch loop waits for a free slot (held == concurrency); _release wakes it.
        self._room: asyncio.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._running = False
        self._subscribed = False
        self._held = 0
        self._ready: deque[Message] = deque()
        self._idle: list[asyncio.Future[None]] = []
        self._workers = 0
        self._settled: asyncio.Event | None = None
        self._matches: dict[tuple[str, str], list[tuple[HandlerSpec, dict[str, str]]]] = {}

    # -- registration -------------------------------------------------------------------------

    def add_handler_group(self, group: HandlerGroup) -> None:
        """Add every handler of ``group`` (also those registered on it later, before listen)."""
        if self._running:
            raise ListenerError("add handler groups before listen() starts")
        for spec in group.handlers:
            self._check(spec)
        group._checks.append(self._check)
        self._groups.append(group)

    def _check(self, spec: HandlerSpec) -> TopicPattern:
        pattern = TopicPattern.parse(spec.topic, self.topic_delimiter)
        if set(pattern.segments) != set(spec.segments):
            raise RegistrationError(
                f"handler {spec.name}: topic {spec.topic!r} does not split into whole segments "
                f"with delimiter {self.topic_delimiter!r}"
            )
        return pattern

    def routes(self) -> RouteTable[HandlerSpec]:
        """The route table, built once from every registered handler."""
        if self._routes is None:
            table: RouteTable[HandlerSpec] = RouteTable()
            for group in self._groups:
                for spec in group.handlers:
                    pattern = self._check(spec)
                    if self.dependency_overrides:
                        spec = spec.with_overrides(self.dependency_overrides)
                    table.add(pattern, spec.event_type, spec)
            self._routes = table
        return self._routes

    @property
    def in_flight(self) -> int:
        """Messages fetched and not yet settled."""
        return self._held

    # -- running ------------------------------------------------------------------------------

    async def subscribe(self) -> None:
        """Subscribe the consumer to what the handlers need. :meth:`listen` does it if needed;
        call it first to be sure events emitted right after are received."""
        if self._subscribed:
            return
        start = getattr(self.consumer, "start", None)
        if start is not None:
            await _as_async(start)(self.routes().patterns())
        self._subscribed = True

    async def listen(self) -> None:
        """Consume until :meth:`stop` is called or the consumer ends, then shut down gracefully."""
        if self._running:
            raise ListenerError("this listener is already listening; create another one")
        self._running = True
        if self._stop is None:
            self._stop = asyncio.Event()
        await self.subscribe()
        fetch = asyncio.create_task(self._fetch_loop(), name="dispytch-fetch")
        stop_wait = asyncio.create_task(self._stop.wait(), name="dispytch-stop-wait")
        graceful = True
        try:
            await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            graceful = False
            raise
        finally:
            stop_wait.cancel()
            if not fetch.done():
                fetch.cancel()
            await asyncio.gather(fetch, stop_wait, return_exceptions=True)
            await self._drain(self.shutdown_timeout if graceful else 0.0)
            close = getattr(self.consumer, "close", None)
            if close is not None:
                await _as_async(close)()
            self._running = False
        if not fetch.cancelled() and fetch.exception() is not None:
            raise fetch.exception()  # type: ignore[misc]

    def stop(self) -> None:
        """Ask :meth:`listen` to stop fetching, finish in-flight work and return."""
        if self._stop is None:
            self._stop = asyncio.Event()
        self._stop.set()

    async def _drain(self, timeout: float) -> None:
        if self._held and timeout > 0:
            logger.info("waiting up to %.1fs for %d in-flight messages", timeout, self._held)
            self._settled = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), timeout)
        if self._held:
            logger.warning(
                "%d messages not finished at shutdown; handing them back unacknowledged",
                self._held,
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        leftovers = list(self._ready)
        self._ready.clear()
        for pending in self._keys.values():
            leftovers.extend(pending)
        self._keys.clear()
        for message in leftovers:
            await self._settle_safely(self._nack, message)
            self._release()

    async def _fetch_loop(self) -> None:
        limit = self.concurrency
        loop = asyncio.get_running_loop()
        ordering = self.ordering
        ready = self._ready
        idle = self._idle
        stream = self.consumer.listen()
        try:
            while True:
                if self._held >= limit:  # backpressure: fetch only with a free slot
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
                self._held += 1
                if ordering == "key":
                    key: Hashable | None = message.key
                elif ordering == "partition":
                    key = (message.topic, message.partition)
                else:
                    key = None
                if key is None:
                    # Unkeyed work goes to a pool of long-lived workers: no task per message.
                    ready.append(message)
                    if idle:
                        waiter = idle.pop()
                        if not waiter.done():
                            waiter.set_result(None)
                    elif self._workers < self.concurrency:
                        self._workers += 1
                        self._spawn(self._worker())
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

    async def _worker(self) -> None:
        ready = self._ready
        loop = asyncio.get_running_loop()
        try:
            while True:
                while ready:
                    message = ready.popleft()
                    try:
                        await self._process(message)
                    finally:
                        self._release()
                waiter: asyncio.Future[None] = loop.create_future()
                self._idle.append(waiter)
                await waiter
        finally:
            self._workers -= 1

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("listener task failed", exc_info=task.exception())

    def _release(self) -> None:
        self._held -= 1
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)
        if not self._held and self._settled is not None:
            self._settled.set()

    async def _run_key(self, key: Hashable, message: Message) -> None:
        queued = self._keys[key]
        current: Message | None = message
        try:
            while current is not None:
                await self._process(current)
                self._release()
                current = queued.popleft() if queued else None
        except BaseException:
            self._release()
            raise
        finally:
            if current is None or not queued:
                self._keys.pop(key, None)

    # -- one message --------------------------------------------------------------------------

    async def _process(self, message: Message) -> None:
        # One coroutine per message from here to the handler's plan: this is the hot path.
        try:
            if message.delivery_attempt > self.max_deliveries:
                await self._dead_letter(
                    message,
                    Failure(
                        "redelivery",
                        "TooManyDeliveries",
                        f"delivered {message.delivery_attempt} times (max_deliveries="
                        f"{self.max_deliveries}); the process kept stopping while handling it",
                        None,
                        message.delivery_attempt,
                        _now_ms(),
                    ),
                )
                return
            try:
                envelope = self.deserializer.deserialize(message.payload)
            except Exception as exc:
                kind = "DecodeError" if isinstance(exc, DecodeError) else type(exc).__name__
                await self._dead_letter(
                    message, Failure("decode", kind, str(exc), None, 1, _now_ms())
                )
                return
            matches = self._lookup(message.topic, envelope.type)
            if not matches:
                logger.debug(
                    "no handler for %r on %r; acknowledging event %s",
                    envelope.type,
                    message.topic,
                    envelope.id,
                )
                await self._settle_safely(self._ack, message)
                return
            if len(matches) == 1:
                spec, segments = matches[0]
                failure = await self._run_handler(spec, segments, envelope, message)
            else:
                results = await asyncio.gather(
                    *(self._run_handler(spec, segs, envelope, message) for spec, segs in matches)
                )
                failure = next((f for f in results if f is not None), None)
            if failure is not None:
                await self._dead_letter(message, failure)
                return
            try:
                await self._ack(message)
            except Exception as exc:
                self._settle_failed(message, exc)
        except asyncio.CancelledError:
            await self._settle_safely(self._nack, message)
            raise
        except Exception:
            logger.exception(
                "could not settle a message from %r; handing it back for redelivery", message.topic
            )
            await self._settle_safely(self._nack, message)

    def _lookup(self, topic: str, event_type: str) -> list[tuple[HandlerSpec, dict[str, str]]]:
        """The handlers for ``(topic, event_type)``, memoised (bounded: both come off the wire)."""
        key = (topic, event_type)
        matches = self._matches.get(key)
        if matches is None:
            matches = self.routes().lookup(topic, event_type)
            if len(self._matches) >= _MATCH_CACHE_SIZE:
                self._matches.clear()
            self._matches[key] = matches
        return matches

    async def _run_handler(
        self, spec: HandlerSpec, raw_segments: dict[str, str], envelope: Envelope, message: Message
    ) -> Failure | None:
        plan = spec.plan
        try:
            if raw_segments:
                check_segments(raw_segments, self.topic_rules)
            events = plan.events(envelope, message.topic)
            segments = plan.segment_values(raw_segments) if plan.segments else []
        except PayloadValidationError as exc:
            return Failure("validation", "ValidationError", str(exc), spec.name, 1, _now_ms())
        retry = spec.retry
        attempt = 1
        while True:
            try:
                await plan.start(events, segments)
            except Exception as exc:
                if retry.should_retry(exc, attempt):
                    delay = retry.delay(attempt)
                    logger.warning(
                        "handler %s failed on event %s (attempt %d/%d: %s: %s); retrying in %.2fs",
                        spec.name,
                        envelope.id,
                        attempt,
                        retry.attempts,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                return Failure(
                    "handler", type(exc).__name__, str(exc), spec.name, attempt, _now_ms()
                )
            if self.observer is not None:
                self.observer.on_handled(
                    spec.name,
                    events[0]
                    if events
                    else Event(
                        envelope.id, envelope.type, message.topic, envelope.body, envelope.timestamp
                    ),
                )
            return None

    async def _dead_letter(self, message: Message, failure: Failure) -> None:
        stored = False
        if self._consumer_dead_letter is not None:
            stored = bool(await self._consumer_dead_letter(message, failure))
        if not stored and self.dead_letter_producer is not None:
            await self.dead_letter_producer.send(
                self.dead_letter_topic.replace("{topic}", message.topic),
                message.payload,
                headers=failure.headers(message),
                key=message.key,
            )
            stored = True
        where = "dead-lettered" if stored else "DROPPED (no dead-letter destination configured)"
        logger.error(
            "%s message from %r%s: %s failure%s after %d attempt(s): %s: %s",
            where,
            message.topic,
            "" if message.offset is None else f" [{message.partition}@{message.offset}]",
            failure.reason,
            f" in {failure.handler}" if failure.handler else "",
            failure.attempts,
            failure.error_type,
            failure.error_message[:500],
        )
        if self.observer is not None:
            self.observer.on_dead_letter(message, failure)
        await self._settle_safely(self._ack, message)

    async def _settle_safely(
        self, settle: Callable[[Message], Awaitable[Any]], message: Message
    ) -> None:
        try:
            await settle(message)
        except Exception as exc:
            self._settle_failed(message, exc)

    @staticmethod
    def _settle_failed(message: Message, exc: Exception) -> None:
        # The broker will redeliver what it did not hear about; the log says so.
        logger.warning(
            "could not settle message from %r (%s: %s); the broker will redeliver it",
            message.topic,
            type(exc).__name__,
            exc,
        )
