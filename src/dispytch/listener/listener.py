"""The listener: fetch, decode, route, run handlers with retries, settle. I/O only via a Consumer.

Delivery contract kept here, once for every backend:

* a message is acked only after every matching handler succeeded (or none matched);
* a permanent failure (retries exhausted, undecodable bytes, invalid body or topic segment) is
  dead-lettered with failure details, then acked; a dead-letter destination that keeps failing
  sends it to the fallback destination, and when that fails too the listener stops
  (:class:`~dispytch.errors.DeadLetterError`) without acknowledging anything more;
* work cut short by shutdown is handed back, never acked;
* at most ``concurrency`` messages (and about ``max_buffer_bytes`` of payload) are held at once,
  and messages sharing an ordering key run one at a time in arrival order.

:class:`EventListener` wires three parts together: the scheduler (fetch loop, backpressure, key
lanes, worker pool, drain), the pipeline (decode, route, handlers, outcome) and the settler
(ack, hand back, dead letters).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from dispytch import allocator
from dispytch.dedup import DedupStore, MemoryDedup
from dispytch.emitter.emitter import EventEmitter
from dispytch.errors import ConfigurationError, ListenerError, RegistrationError, ShutdownError
from dispytch.events import Event
from dispytch.handler import HandlerGroup, HandlerSpec, check_timeout
from dispytch.listener.adapter import as_consumer
from dispytch.listener.outputs import Outputs
from dispytch.listener.pipeline import Pipeline, Route
from dispytch.listener.scheduler import MIN_GRACE, Ordering, Scheduler
from dispytch.listener.settle import DEFAULT_DEAD_LETTER_RETRY, Settler
from dispytch.middleware import (
    APP_SCOPES,
    ConsumeContext,
    ConsumeNext,
    HandleNext,
    HandlerCall,
    Middleware,
    check_middleware,
    scope_methods,
)
from dispytch.retry import RetryMode, RetryPolicy, check_retry_mode
from dispytch.routing import RouteTable, TopicPattern
from dispytch.seam import Consumer, Failure, Message, Producer
from dispytch.serialization.deserializer import Deserializer
from dispytch.serialization.json import JSONDeserializer
from dispytch.topic_rules import GENERIC, TopicRules

__all__ = ["DEFAULT_MAX_BUFFER_BYTES", "EventListener", "ListenerObserver", "Ordering"]

logger = logging.getLogger("dispytch.listener")


def _NO_JITTER() -> float:
    """A ``rand`` for :meth:`RetryPolicy.delay` that gives the delay without jitter."""
    return 0.5


#: Default bound on the payload bytes a listener holds (fetched, not yet settled): 64 MiB.
DEFAULT_MAX_BUFFER_BYTES = 64 * 1024 * 1024


class ListenerObserver(Protocol):
    """Hooks for tests and metrics; called on the listener's task, keep them cheap.

    Kept for compatibility: an observer runs as a :class:`~dispytch.middleware.Middleware`
    (see :class:`ObserverMiddleware`); new code writes middleware directly.
    """

    def on_handled(self, handler: str, event: Event[Any]) -> None: ...

    def on_dead_letter(self, message: Message, failure: Failure) -> None: ...


class ObserverMiddleware(Middleware):
    """A :class:`ListenerObserver` as middleware: ``on_handled`` after each successful handler
    call, ``on_dead_letter`` after each dead letter was stored."""

    def __init__(self, observer: ListenerObserver) -> None:
        self.observer = observer

    async def consume(self, context: ConsumeContext, call_next: ConsumeNext) -> None:
        await call_next(context)
        if context.outcome == "dead_lettered" and context.failure is not None:
            self.observer.on_dead_letter(context.message, context.failure)

    async def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        result = await call_next(call)
        self.observer.on_handled(call.handler, call.event)
        return result


class EventListener:
    """Consumes messages from ``consumer`` and dispatches them to registered handlers.

    Args:
        consumer: the backend consumer (``listen()`` and ``ack()`` at least).
        deserializer: decodes message bytes; JSON by default.
        topic_delimiter: separates topic segments for patterns like ``user:{user_id}:events``.
        concurrency: how many messages are held at once; fetching waits for a free slot.
        ordering: ``"key"`` runs messages that share a key one at a time (unkeyed ones in
            parallel); ``"partition"`` serialises each partition or queue; ``"none"`` never waits.
        shutdown_timeout: seconds in-flight work gets to finish on stop before it is cancelled
            and handed back.
        shutdown_grace: seconds cancelled work gets to end; a handler that ignores cancellation
            longer is abandoned and :meth:`listen` raises :class:`~dispytch.errors.ShutdownError`.
        dead_letter_producer: where permanent failures go when the consumer has no dead-letter
            destination of its own; ``dead_letter_topic`` names the destination
            (``{topic}`` is the original topic) and ``dead_letter_fallback_topic`` the fixed
            destination used when that keeps failing.
        dead_letter_retry: how a failing dead-letter destination is retried (default: 5
            attempts, exponential backoff from 0.5 s, capped at 10 s, with jitter).
        max_deliveries: a message the broker delivered more often than this (the process died
            while handling it each time) is dead-lettered without running handlers again.
        max_buffer_bytes: fetching pauses while the payloads held exceed this many bytes
            (``None``: no byte bound). One larger message still goes through alone.
        handler_timeout: seconds each handler attempt may take unless the handler sets its own
            ``timeout`` (``None``: no limit).
        middleware: :class:`~dispytch.middleware.Middleware` around each message and each
            handler call, outermost first.
        observer: a :class:`ListenerObserver` (kept for compatibility; runs as middleware).
        topic_rules: what a captured ``{segment}`` may hold (the backend's rules; by default
            the generic ones split at ``topic_delimiter``); a message whose segment breaks
            them is dead-lettered as a validation failure.
        emitter: publishes the events handlers return and sends replies to requests (see
            :mod:`dispytch.listener.outputs`); by default one over ``dead_letter_producer``.
        dedup: the :class:`~dispytch.dedup.DedupStore` of handlers that skip events they
            already succeeded on: every handler unless it says ``dedup=False``. Without one,
            a handler with ``dedup=True`` gets an in-process
            :class:`~dispytch.dedup.MemoryDedup`. ``dedup_scope`` starts every key (an App
            passes its group), so services sharing a store do not see each other's keys.
        retry_mode: where the retries of handlers that do not choose wait: ``"process"``
            (sleeping in the handler's slot, the default) or ``"broker"`` (a delayed delivery
            by the broker; the consumer must support it, see :mod:`dispytch.broker_retries`).
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
        shutdown_grace: float = 2.0,
        dead_letter_producer: Producer | None = None,
        dead_letter_topic: str = "{topic}.dlq",
        dead_letter_fallback_topic: str | None = None,
        dead_letter_retry: RetryPolicy | None = None,
        max_deliveries: int = 10,
        max_buffer_bytes: int | None = DEFAULT_MAX_BUFFER_BYTES,
        handler_timeout: float | None = None,
        middleware: Sequence[object] | None = None,
        observer: ListenerObserver | None = None,
        dependency_overrides: Mapping[Callable[..., Any], Any] | None = None,
        topic_rules: TopicRules | None = None,
        emitter: EventEmitter | None = None,
        dedup: DedupStore | None = None,
        dedup_scope: str = "",
        retry_mode: RetryMode = "process",
    ) -> None:
        if concurrency < 1:
            raise RegistrationError(f"concurrency must be >= 1, got {concurrency}")
        if ordering not in ("key", "partition", "none"):
            raise RegistrationError(f"ordering must be 'key', 'partition' or 'none': {ordering!r}")
        if "{topic}" not in dead_letter_topic:
            raise RegistrationError("dead_letter_topic must contain '{topic}', e.g. '{topic}.dlq'")
        if max_buffer_bytes is not None and (
            not isinstance(max_buffer_bytes, int) or max_buffer_bytes < 1
        ):
            raise RegistrationError(
                f"max_buffer_bytes must be an int >= 1 (or None), got {max_buffer_bytes!r}"
            )
        for name, value in (
            ("shutdown_timeout", shutdown_timeout),
            ("shutdown_grace", shutdown_grace),
        ):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise RegistrationError(f"{name} must be seconds >= 0, got {value!r}")
        self.retry_mode: RetryMode = check_retry_mode(retry_mode, "retry_mode") or "process"
        self.consumer = consumer
        self.deserializer = deserializer or JSONDeserializer()
        self.topic_delimiter = topic_delimiter
        self.topic_rules = topic_rules or GENERIC.with_delimiter(topic_delimiter)
        self.concurrency = concurrency
        self.ordering = ordering
        self.shutdown_timeout = shutdown_timeout
        self.shutdown_grace = shutdown_grace
        self.dead_letter_producer = dead_letter_producer
        self.dead_letter_topic = dead_letter_topic
        self.dead_letter_fallback_topic = dead_letter_fallback_topic
        self.dead_letter_retry = dead_letter_retry or DEFAULT_DEAD_LETTER_RETRY
        self.max_deliveries = max_deliveries
        self.max_buffer_bytes = max_buffer_bytes
        self.handler_timeout = check_timeout(handler_timeout, "handler_timeout")
        self.middleware: list[object] = list(middleware or ())
        for item in self.middleware:
            check_middleware(item, "middleware", APP_SCOPES)
        self.observer = observer
        self.dependency_overrides = dependency_overrides
        if dedup is not None and not isinstance(dedup, DedupStore):
            raise RegistrationError(
                f"dedup must be a DedupStore (MemoryDedup(), RedisDedup(url)), got {dedup!r}"
            )
        if emitter is None and dead_letter_producer is not None:
            emitter = EventEmitter(dead_letter_producer)
        self.emitter = emitter
        self.dedup = dedup
        self.dedup_scope = dedup_scope
        self._own = HandlerGroup()
        self._own._checks.append(self._check)
        self._groups: list[HandlerGroup] = [self._own]
        #: Register a handler on this listener itself; see :meth:`HandlerGroup.handler`.
        self.handler = self._own.handler
        self._routes: RouteTable[HandlerSpec] | None = None
        self._compiled: RouteTable[Route] | None = None
        # The seam, adapted once: a seed-style consumer gets a wrapper, not a getattr per call.
        self._consumer = as_consumer(consumer)
        self._stop: asyncio.Event | None = None
        self._running = False
        self._subscribed = False
        self._scheduler: Scheduler | None = None
        self._settler: Settler | None = None
        self._fatal: BaseException | None = None

    # -- registration -------------------------------------------------------------------------

    def add_handler_group(self, group: HandlerGroup) -> None:
        """Add every handler of ``group`` (also those registered on it later, before listen)."""
        if self._running:
            raise ListenerError("add handler groups before listen() starts")
        for spec in group.handlers:
            self._check(spec)
        group._checks.append(self._check)
        self._groups.append(group)

    def add_middleware(self, middleware: object) -> None:
        """Wrap every message and handler call in ``middleware``, inside those added before it."""
        if self._running:
            raise ListenerError("add middleware before listen() starts")
        check_middleware(middleware, "middleware", APP_SCOPES)
        self.middleware.append(middleware)

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
            self._build_routes()
        assert self._routes is not None
        return self._routes

    def handler_routes(self) -> list[Route]:
        """Every handler as the pipeline runs it (name, pattern, event type...), built once."""
        if self._compiled is None:
            self._build_routes()
        assert self._compiled is not None
        return list(self._compiled.values())

    def _build_routes(self) -> None:
        middleware = self._all_middleware()
        outer = scope_methods(middleware, "handle")
        specs: RouteTable[HandlerSpec] = RouteTable()
        compiled: RouteTable[Route] = RouteTable()
        for group in self._groups:
            around = outer + scope_methods(group.middleware, "handle")
            for spec in group.handlers:
                pattern = self._check(spec)
                if self.dependency_overrides:
                    spec = spec.with_overrides(self.dependency_overrides)
                specs.add(pattern, spec.event_type, spec)
                timeout = spec.timeout if spec.timeout is not None else self.handler_timeout
                own = scope_methods(spec.middleware, "handle")
                broker = (spec.retry_mode or self.retry_mode) == "broker" and spec.retry.retries > 0
                route = Route(
                    spec,
                    timeout,
                    around + own,
                    self._dedup_of(spec),
                    self.dedup_scope,
                    broker_retry=broker,
                )
                compiled.add(pattern, spec.event_type, route)
        self._routes, self._compiled = specs, compiled

    def _dedup_of(self, spec: HandlerSpec) -> DedupStore | None:
        if spec.dedup is False or (spec.dedup is None and self.dedup is None):
            return None
        if self.dedup is None:  # dedup=True without a store: this process's memory
            self.dedup = MemoryDedup()
        return self.dedup

    def _all_middleware(self) -> list[object]:
        if self.observer is None:
            return list(self.middleware)
        return [*self.middleware, ObserverMiddleware(self.observer)]

    @property
    def in_flight(self) -> int:
        """Messages fetched and not yet settled."""
        return self._scheduler.held if self._scheduler is not None else 0

    @property
    def settled(self) -> int:
        """Messages settled (or handed back) since :meth:`listen` started."""
        return self._scheduler.released if self._scheduler is not None else 0

    @property
    def subscribed(self) -> bool:
        """Whether the consumer made its subscriptions (:meth:`subscribe`)."""
        return self._subscribed

    @property
    def listening(self) -> bool:
        """Whether :meth:`listen` runs."""
        return self._running

    async def lag(self) -> Mapping[str, int] | None:
        """Ask the broker how many messages wait for this consumer
        (:meth:`Consumer.lag() <dispytch.listener.consumer.Consumer.lag>`); raises when the
        broker does not answer. Never called per message."""
        return await self._consumer.lag()

    # -- running ------------------------------------------------------------------------------

    async def subscribe(self) -> None:
        """Subscribe the consumer to what the handlers need. :meth:`listen` does it if needed;
        call it first to be sure events emitted right after are received."""
        if self._subscribed:
            return
        patterns = self.routes().patterns()
        if self._broker_retries():
            assert self._compiled is not None  # built by routes()
            delays = {
                r.retry.delay(attempt, rand=_NO_JITTER)
                for r in self._compiled.values()
                if r.broker_retry
                for attempt in range(1, r.retry.attempts)
            }
            self._consumer.use_broker_retries(sorted(delays))
        await self._consumer.start(patterns)
        self._subscribed = True

    def _broker_retries(self) -> int:
        """The most retries of a handler that retries through the broker (0: none does);
        raises when the consumer cannot."""
        assert self._compiled is not None  # built by routes()
        broker = [r for r in self._compiled.values() if r.broker_retry]
        if broker and not self._consumer.supports_broker_retries:
            raise ConfigurationError(
                f"handler {broker[0].name} retries through the broker (retry_mode='broker'), "
                f"but {type(self.consumer).__name__} cannot delay a delivery; use "
                "retry_mode='process' for it, or a backend that can (Kafka, RabbitMQ, Redis "
                "Streams, NATS JetStream, memory)"
            )
        return max((r.retry.retries for r in broker), default=0)

    async def listen(self) -> None:
        """Consume until :meth:`stop` is called or the consumer ends, then shut down gracefully.

        Raises :class:`~dispytch.errors.DeadLetterError` when a message could be stored
        neither in its dead-letter destination nor in the fallback, and
        :class:`~dispytch.errors.ShutdownError` when handlers ignored cancellation at shutdown.
        """
        if self._running:
            raise ListenerError("this listener is already listening; create another one")
        self._running = True
        allocator.prime()
        try:
            await self._listen()
        finally:
            self._running = False

    def stop(self) -> None:
        """Ask :meth:`listen` to stop fetching, finish in-flight work and return."""
        if self._stop is None:
            self._stop = asyncio.Event()
        self._stop.set()

    async def _listen(self) -> None:
        if self._stop is None:
            self._stop = asyncio.Event()
        self._fatal = None
        await self.subscribe()
        routes = self._compiled
        assert routes is not None  # built by subscribe() -> routes()
        middleware = self._all_middleware()
        settler = Settler(
            self._consumer,
            dead_letter_producer=self.dead_letter_producer,
            dead_letter_topic=self.dead_letter_topic,
            fallback_topic=self.dead_letter_fallback_topic,
            retry=self.dead_letter_retry,
        )
        pipeline = Pipeline(
            routes,
            self.deserializer,
            settler,
            max_deliveries=self.max_deliveries,
            topic_rules=self.topic_rules,
            on_fatal=self._fail,
            consume_middleware=scope_methods(middleware, "consume"),
            outputs=Outputs(self.emitter, self._consumer.stage_outputs),
            broker_retries=self._broker_retries(),
            after_consume=scope_methods(middleware, "after_consume"),
        )
        scheduler = Scheduler(
            pipeline.process,
            settler.nack,
            concurrency=self.concurrency,
            ordering=self.ordering,
            max_buffer_bytes=self.max_buffer_bytes,
            shutdown_grace=self.shutdown_grace,
        )
        self._settler, self._scheduler = settler, scheduler
        fetch = asyncio.create_task(scheduler.fetch(self._consumer.listen()), name="dispytch-fetch")
        stop_wait = asyncio.create_task(self._stop.wait(), name="dispytch-stop-wait")
        interrupted = False
        try:
            await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            interrupted = True
        stuck, cancelled = await self._shut_down(fetch, stop_wait, graceful=not interrupted)
        if interrupted or cancelled:
            raise asyncio.CancelledError
        if self._fatal is not None:
            raise self._fatal
        if stuck:
            raise ShutdownError(
                f"{stuck} handler task(s) ignored cancellation after the shutdown timeout "
                f"({self.shutdown_timeout:g}s + {self.shutdown_grace:g}s grace); their "
                "messages were handed back unacknowledged. Let asyncio.CancelledError "
                "propagate in handlers"
            )
        if fetch.done() and not fetch.cancelled() and fetch.exception() is not None:
            raise fetch.exception()  # type: ignore[misc]

    async def _shut_down(
        self, fetch: asyncio.Task[None], stop_wait: asyncio.Task[Any], *, graceful: bool
    ) -> tuple[int, bool]:
        """Stop fetching, drain, close the consumer. Never cut short by a cancellation (each
        step is bounded); returns the abandoned task count and whether we were cancelled."""
        settler, scheduler = self._settler, self._scheduler
        assert settler is not None and scheduler is not None
        interrupted = False
        stop_wait.cancel()
        if not fetch.done():
            fetch.cancel()
        try:
            await asyncio.wait({fetch, stop_wait}, timeout=max(self.shutdown_grace, MIN_GRACE))
        except asyncio.CancelledError:
            interrupted = True
        timeout = self.shutdown_timeout if graceful and self._fatal is None else 0.0
        stuck, cancelled = await scheduler.drain(timeout, before_cancel=settler.close)
        settler.sealed = True
        try:
            await self._consumer.close()
        except asyncio.CancelledError:
            interrupted = True
        except Exception:
            logger.exception("closing the consumer failed")
        return stuck, interrupted or cancelled

    def _fail(self, error: BaseException) -> None:
        """A fatal error in the pipeline: acknowledge nothing more and stop."""
        if self._settler is not None:
            self._settler.close()
        if self._scheduler is not None:
            self._scheduler.halt()
        if self._fatal is None:
            self._fatal = error  # raised by listen() once the drain is done
        if self._stop is not None:
            self._stop.set()
