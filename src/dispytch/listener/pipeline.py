"""The per-message pipeline: decode, route, run the handlers with retries and timeouts, settle.

:meth:`Pipeline.run` is the hot path: one coroutine per message from the scheduler to the
handler's call plan. Middleware, when registered, wraps it (:meth:`Pipeline.run_observed`) and
each handler attempt (:class:`Route`); without middleware nothing of it is built or awaited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import Any

from dispytch.dedup import DedupStore, dedup_key
from dispytch.di.plan import CallPlan
from dispytch.errors import DeadLetterError, DecodeError, HandlerTimeout, PayloadValidationError
from dispytch.events import Envelope
from dispytch.handler import HandlerSpec
from dispytch.listener.outputs import Outputs
from dispytch.listener.settle import Settler, now_ms, settle_failed
from dispytch.middleware import ConsumeContext, HandlerCall, Outcome, chain, hook_failed
from dispytch.retry import RetryPolicy
from dispytch.routing import RouteTable
from dispytch.seam import Failure, Message, RetryLater
from dispytch.serialization.deserializer import Deserializer
from dispytch.topic_rules import TopicRules, check_segments
from dispytch.untrusted import loggable

__all__ = ["Pipeline", "Route"]

logger = logging.getLogger("dispytch.listener")

#: The segment values of a handler whose topic has no segments.
_NO_VALUES: list[Any] = []

#: Distinct (topic, event type) pairs whose handler lists are memoised before the memo resets.
_MATCH_CACHE_SIZE = 4096

Match = tuple["Route", dict[str, str]]


class Route:
    """One handler as the pipeline runs it: its plan, retry policy, timeout, dedup store and the
    chain of ``handle`` middleware around it, all resolved once when the listener starts."""

    __slots__ = (
        "broker_retry",
        "call",
        "dedup",
        "dedup_prefix",
        "event_type",
        "key",
        "name",
        "pattern",
        "plain",
        "plan",
        "retry",
        "spec",
        "timeout",
    )

    def __init__(
        self,
        spec: HandlerSpec,
        timeout: float | None,
        middleware: Sequence[Callable[..., Any]],
        dedup: DedupStore | None = None,
        dedup_scope: str = "",
        broker_retry: bool = False,
    ) -> None:
        self.spec = spec
        self.plan: CallPlan = spec.plan
        self.name = spec.name
        self.key = spec.key
        self.pattern = spec.topic
        self.event_type = spec.event_type
        self.retry: RetryPolicy = spec.retry
        self.timeout = timeout
        #: where this handler's successes are remembered (``None``: no dedup)
        self.dedup = dedup
        self.dedup_prefix = f"{dedup_scope}:{self.key}:"
        #: retries are delayed deliveries by the broker (``retry_mode="broker"``)
        self.broker_retry = broker_retry
        #: the middleware chain for one attempt; ``None`` when there is no middleware
        self.call: Callable[[HandlerCall], Awaitable[Any]] | None = (
            chain(middleware, self._terminal) if middleware else None
        )
        #: no dedup, middleware, timeout or topic segments: the pipeline runs a first attempt inline
        self.plain = (
            dedup is None and self.call is None and timeout is None and not self.plan.segments
        )

    def _terminal(self, call: HandlerCall) -> Awaitable[Any]:
        if self.timeout is None:
            return self.plan.start(call._events, call._segments)
        return self.bounded(call._events, call._segments)

    async def bounded(self, events: list[Any], segments: list[Any]) -> Any:
        """One attempt, cancelled after ``timeout`` seconds (then :class:`HandlerTimeout`)."""
        scope = asyncio.timeout(self.timeout)
        try:
            async with scope:
                result = await self.plan.start(events, segments)
        except Exception:
            # TimeoutError from the scope, or whatever the handler turned its cancellation into.
            if scope.expired():
                raise self._timed_out() from None
            raise
        if scope.expired():  # the handler swallowed the cancellation and returned
            raise self._timed_out()
        return result

    def _timed_out(self) -> HandlerTimeout:
        return HandlerTimeout(
            f"handler {self.name} did not finish within {self.timeout:g}s and was cancelled"
        )


class Pipeline:
    """Runs one message from bytes to settle. I/O only through the :class:`Settler`."""

    def __init__(
        self,
        routes: RouteTable[Route],
        deserializer: Deserializer,
        settler: Settler,
        *,
        max_deliveries: int,
        topic_rules: TopicRules,
        on_fatal: Callable[[BaseException], None],
        consume_middleware: Sequence[Callable[..., Any]] = (),
        outputs: Outputs | None = None,
        broker_retries: int = 0,
        after_consume: Sequence[Callable[[ConsumeContext], object]] = (),
    ) -> None:
        self.routes = routes
        #: what handlers return: events to publish, replies to requests
        self.outputs = outputs or Outputs(None)
        self._dedup_failing = False
        #: most retries of a broker-mode handler (a delivery count may include them)
        self.broker_retries = broker_retries
        self.deserializer = deserializer
        self.settler = settler
        self.max_deliveries = max_deliveries
        self.topic_rules = topic_rules
        self._on_fatal = on_fatal
        consumer = settler.consumer
        self._ack = consumer.ack if consumer.acks else None
        self._matches: dict[str, dict[str, list[Match]]] = {}
        self._memoised = 0
        self._chain: Callable[[ConsumeContext], Awaitable[None]] | None = (
            chain(consume_middleware, self._terminal) if consume_middleware else None
        )
        self._after = tuple(after_consume)
        #: what the scheduler calls per message: with ``after_consume`` hooks only, no
        #: coroutine more than without middleware (the hooks run where the message is settled)
        self.process: Callable[[Message], Awaitable[None]]
        if self._chain is not None:
            self.process = self.run_observed
        elif self._after:
            self.process = self._observed
        else:
            self.process = self.run

    # -- one message --------------------------------------------------------------------------

    async def run(self, message: Message, ctx: ConsumeContext | None = None) -> None:
        # One coroutine per message from here to the handler's plan: this is the hot path.
        settler = self.settler
        try:
            if message.undecodable is not None:
                # The adapter could not decode its broker metadata: no handler can be chosen.
                await self._dead_letter(
                    message, message.undecodable.failure(message.delivery_attempt), None, ctx
                )
                return
            if message.delivery_attempt > self.max_deliveries and not self._retries_counted(
                message
            ):
                await self._dead_letter(
                    message,
                    Failure(
                        "redelivery",
                        "TooManyDeliveries",
                        f"delivered {message.delivery_attempt} times (max_deliveries="
                        f"{self.max_deliveries}); the process kept stopping while handling it",
                        None,
                        message.delivery_attempt,
                        now_ms(),
                    ),
                    None,
                    ctx,
                )
                return
            try:
                envelope = self.deserializer.deserialize(message.payload)
            except Exception as exc:
                kind = "DecodeError" if isinstance(exc, DecodeError) else type(exc).__name__
                await self._dead_letter(
                    message, Failure("decode", kind, str(exc), None, 1, now_ms(), exc), None, ctx
                )
                return
            if ctx is not None:
                ctx.event_id = envelope.id
                ctx.event_type = envelope.type
            matches = self._lookup(message.topic, envelope.type)
            if not matches:
                logger.debug(
                    "no handler for %s on %s; acknowledging event %s",
                    loggable(envelope.type),
                    loggable(message.topic),
                    loggable(envelope.id),
                )
                acked = await settler.ack(message)
                if ctx is not None:
                    self._done(ctx, "no_handler" if acked else "handed_back")
                return
            if message.retry is not None and message.retry.handler is not None:
                matches = self._retried(matches, message.retry.handler, envelope.id)
                if not matches:
                    acked = await settler.ack(message)
                    if ctx is not None:
                        self._done(ctx, "no_handler" if acked else "handed_back")
                    return
            if ctx is not None:
                ctx._matches = matches
            if len(matches) == 1:
                route, segments = matches[0]
                if route.plain and not segments and message.retry is None:
                    # The first attempt here (one coroutine less per message); a failure
                    # goes on in _run_handler, which also words a validation error.
                    plan = route.plan
                    try:
                        events = plan.events(envelope, message.topic, message.headers)
                    except PayloadValidationError:
                        outcome = await self._run_handler(route, segments, envelope, message, ctx)
                    else:
                        try:
                            result = await plan.start(events, _NO_VALUES)
                            if result is not None:
                                await self.outputs.deliver(result, route, envelope, message)
                            outcome = None
                        except Exception as exc:
                            outcome = await self._run_handler(
                                route, segments, envelope, message, ctx, exc
                            )
                else:
                    outcome = await self._run_handler(route, segments, envelope, message, ctx)
                if isinstance(outcome, RetryLater):
                    await self._retry_later(message, [outcome], None, envelope.id, ctx)
                    return
                failure = outcome
            else:
                results = await asyncio.gather(
                    *(self._run_handler(r, segs, envelope, message, ctx) for r, segs in matches)
                )
                failure = next((f for f in results if isinstance(f, Failure)), None)
                retries = [r for r in results if isinstance(r, RetryLater)]
                if retries:
                    await self._retry_later(message, retries, failure, envelope.id, ctx)
                    return
            if failure is not None:
                await self._dead_letter(message, failure, envelope.id, ctx)
                return
            if settler.open:
                if self._ack is not None:
                    try:
                        await self._ack(message)
                    except Exception as exc:
                        settle_failed(message, exc)
                if ctx is not None:
                    self._done(ctx, "handled")
            else:
                await settler.nack(message)
                if ctx is not None:
                    self._done(ctx, "handed_back")
        except asyncio.CancelledError:
            await settler.nack(message)
            if ctx is not None and ctx.outcome is None:
                self._done(ctx, "handed_back")
            raise
        except DeadLetterError as exc:
            self._on_fatal(exc)  # first: stop fetching before the hand-back can come back
            await settler.nack(message)
            if ctx is not None:
                self._done(ctx, "handed_back", exc)
        except Exception as exc:
            logger.exception(
                "could not settle a message from %s; handing it back for redelivery",
                loggable(message.topic),
            )
            await settler.nack(message)
            if ctx is not None and ctx.outcome is None:
                self._done(ctx, "handed_back", exc)

    def _done(
        self, ctx: ConsumeContext, outcome: Outcome, error: BaseException | None = None
    ) -> None:
        """Record how ``ctx``'s message was settled and run the ``after_consume`` hooks."""
        # Once per message: no method call more than needed.
        ctx.duration = perf_counter() - ctx.started
        ctx.outcome = outcome
        if error is not None:
            ctx.error = error
        for hook in self._after:
            try:
                hook(ctx)
            except Exception as exc:
                hook_failed(hook, exc)

    async def _dead_letter(
        self,
        message: Message,
        failure: Failure,
        event_id: str | None,
        ctx: ConsumeContext | None,
    ) -> None:
        stored = await self.settler.dead_letter(message, failure, event_id)
        if stored and message.headers:
            await self.outputs.reply_failure(message, failure)
        if ctx is not None:
            if stored:
                ctx.failure = failure
            self._done(ctx, "dead_lettered" if stored else "handed_back", failure.error)

    async def _retry_later(
        self,
        message: Message,
        retries: list[RetryLater],
        failure: Failure | None,
        event_id: str,
        ctx: ConsumeContext | None,
    ) -> None:
        """Broker-delayed retries of ``retries`` (and the dead letter of ``failure``, another
        handler's final failure): the message is settled by the consumer."""
        done = await self.settler.retry_later(message, retries, failure, event_id)
        if ctx is not None:
            if done and failure is not None:
                ctx.failure = failure
            self._done(ctx, "retried" if done else "handed_back")

    def _retries_counted(self, message: Message) -> bool:
        """A delivery whose count includes broker retries (JetStream) within their number."""
        retry = message.retry
        return (
            retry is not None
            and retry.counted
            and message.delivery_attempt <= self.max_deliveries + self.broker_retries
        )

    def _retried(self, matches: list[Match], handler: str, event_id: str) -> list[Match]:
        """The match of the handler a broker retry is for (none when it is gone)."""
        for match in matches:
            if match[0].name == handler:
                return [match]
        logger.warning(
            "a retry of event %s is for handler %s, which does not handle it any more; "
            "acknowledging it",
            loggable(event_id),
            loggable(handler),
        )
        return []

    def _lookup(self, topic: str, event_type: str) -> list[Match]:
        """The routes for ``(topic, event_type)``, memoised (bounded: both come off the wire).

        Two dict levels rather than a ``(topic, type)`` key: no tuple built per message."""
        by_type = self._matches.get(topic)
        if by_type is not None:
            matches = by_type.get(event_type)
            if matches is not None:
                return matches
        matches = self.routes.lookup(topic, event_type)
        self._memoised += 1
        if self._memoised > _MATCH_CACHE_SIZE:
            self._matches.clear()
            self._memoised = 1
            by_type = None
        if by_type is None:
            by_type = self._matches[topic] = {}
        by_type[event_type] = matches
        return matches

    async def _run_handler(
        self,
        route: Route,
        raw_segments: dict[str, str],
        envelope: Envelope,
        message: Message,
        ctx: ConsumeContext | None,
        failed: Exception | None = None,
    ) -> Failure | RetryLater | None:
        """Run ``route``'s handler on the event, with its retries; ``failed``: how the first
        attempt, already made, failed."""
        dedup = route.dedup
        if dedup is not None:
            key = dedup_key(route.dedup_prefix, envelope.id)
            if await self._seen(dedup, key, route, envelope):
                return None
        plan = route.plan
        try:
            if raw_segments:
                check_segments(raw_segments, self.topic_rules)
            events = plan.events(envelope, message.topic, message.headers)
            segments = plan.segment_values(raw_segments) if plan.segments else []
        except PayloadValidationError as exc:
            return Failure("validation", "ValidationError", str(exc), route.name, 1, now_ms(), exc)
        retry = route.retry
        call = route.call
        attempt = 1
        staged = False
        if message.retry is not None and route.broker_retry:
            # From a header anyone could write: never beyond the policy's attempts.
            attempt = max(1, min(message.retry.attempt, retry.attempts))
        while True:
            try:
                if failed is not None:
                    error, failed = failed, None
                    raise error
                if call is not None:
                    result = await call(
                        HandlerCall(
                            message, route, raw_segments, attempt, envelope, events, segments
                        )
                    )
                elif route.timeout is None:
                    result = await plan.start(events, segments)
                else:
                    result = await route.bounded(events, segments)
                if result is not None:
                    # Published (or replied) before the ack: part of the attempt.
                    staged = await self.outputs.deliver(result, route, envelope, message)
            except Exception as exc:
                retrying = retry.should_retry(exc, attempt)
                if ctx is not None:
                    ctx._failed(route, attempt, exc, retrying)
                if retrying:
                    delay = retry.delay(attempt)
                    logger.warning(
                        "handler %s failed on event %s (attempt %d/%d: %s: %s); %s in %.2fs",
                        route.name,
                        loggable(envelope.id),
                        attempt,
                        retry.attempts,
                        type(exc).__name__,
                        loggable(exc),
                        "the broker delivers it again" if route.broker_retry else "retrying",
                        delay,
                    )
                    if route.broker_retry:
                        return RetryLater(route.name, attempt + 1, delay)
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                return Failure(
                    "handler", type(exc).__name__, str(exc), route.name, attempt, now_ms(), exc
                )
            # Outputs staged in a Kafka transaction are not published yet: an aborted
            # transaction must run the handler again, so its success is not recorded.
            if dedup is not None and not staged:
                await self._record(dedup, key, route, envelope)
            return None

    # -- dedup --------------------------------------------------------------------------------

    async def _seen(self, store: DedupStore, key: str, route: Route, envelope: Envelope) -> bool:
        """Whether ``route``'s handler already succeeded on the event; a failing store counts
        as "no" (the handler runs: at-least-once is kept, never an event skipped unhandled)."""
        try:
            seen = await store.seen(key)
        except Exception as exc:
            self._dedup_failed("look up", store, route, envelope, exc)
            return False
        self._dedup_failing = False
        if seen:
            logger.debug(
                "skipping %s for event %s: it already succeeded on it (dedup)",
                route.name,
                loggable(envelope.id),
            )
        return seen

    async def _record(self, store: DedupStore, key: str, route: Route, envelope: Envelope) -> None:
        try:
            await store.record(key)
        except Exception as exc:
            self._dedup_failed("record", store, route, envelope, exc)
        else:
            self._dedup_failing = False

    def _dedup_failed(
        self, what: str, store: DedupStore, route: Route, envelope: Envelope, exc: Exception
    ) -> None:
        # One warning per outage, not one per message.
        level = logging.DEBUG if self._dedup_failing else logging.WARNING
        self._dedup_failing = True
        logger.log(
            level,
            "dedup store %r could not %s event %s for %s (%s: %s); the handler runs (again) "
            "if the event is delivered again",
            store,
            what,
            loggable(envelope.id),
            route.name,
            type(exc).__name__,
            loggable(exc),
        )

    # -- with consume middleware --------------------------------------------------------------

    def _terminal(self, ctx: ConsumeContext) -> Awaitable[None]:
        return self.run(ctx.message, ctx)

    def _observed(self, message: Message) -> Awaitable[None]:
        """:meth:`run` with a context for the ``after_consume`` hooks (no consume scope)."""
        return self.run(message, ConsumeContext(message))

    async def run_observed(self, message: Message) -> None:
        """:meth:`run` inside the ``consume`` middleware chain."""
        consume = self._chain
        if consume is None:
            return await self.run(message)
        ctx = ConsumeContext(message)
        try:
            await consume(ctx)
        except asyncio.CancelledError:
            if ctx.outcome is None:
                await self.settler.nack(message)
                self._done(ctx, "handed_back")
            raise
        except Exception as exc:
            if ctx.outcome is not None:
                logger.error(
                    "consume middleware raised after a message from %s was settled (%s): %s: %s",
                    loggable(message.topic),
                    ctx.outcome,
                    type(exc).__name__,
                    loggable(exc),
                )
                return
            await self._unsettled(
                ctx, Failure("middleware", type(exc).__name__, str(exc), None, 1, now_ms(), exc)
            )
            return
        if ctx.outcome is None:
            await self._unsettled(
                ctx,
                Failure(
                    "middleware",
                    "MiddlewareError",
                    "a consume middleware returned without calling call_next",
                    None,
                    1,
                    now_ms(),
                ),
            )

    async def _unsettled(self, ctx: ConsumeContext, failure: Failure) -> None:
        """A consume middleware failed before the message was settled: dead-letter it."""
        try:
            await self._dead_letter(ctx.message, failure, ctx.event_id, ctx)
        except DeadLetterError as exc:
            self._on_fatal(exc)
            await self.settler.nack(ctx.message)
            self._done(ctx, "handed_back", exc)
