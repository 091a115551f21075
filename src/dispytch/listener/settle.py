"""Settling: ack, hand back, dead-letter, and what happens when the dead-letter destination fails.

This is the one dead-letter chain: handler failures, decode and validation errors, messages
delivered too often, and messages whose broker metadata the adapter could not decode
(:attr:`Message.undecodable <dispytch.seam.Message>`) all take it, with one retry policy and
one log line.

A permanent failure goes to the consumer's dead-letter destination (or, for a consumer without
one, to ``dead_letter_topic`` through the listener's producer). A destination that raises is
retried with capped exponential backoff and jitter; after the last attempt the message goes to
the fixed *fallback* destination (``Consumer.dead_letter_fallback``, else the producer's
``fallback_topic``). When that fails too, or there is none,
:class:`~dispytch.errors.DeadLetterError` is raised: the listener stops, acknowledges nothing
more, and hands in-flight work back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from dispytch.errors import DeadLetterError
from dispytch.poison import dead_letter_headers
from dispytch.retry import RetryPolicy
from dispytch.seam import Consumer, Failure, Message, Producer, RetryLater
from dispytch.untrusted import loggable

__all__ = ["DEFAULT_DEAD_LETTER_RETRY", "Settler", "now_ms"]

logger = logging.getLogger("dispytch.listener")

#: How a failing dead-letter destination is retried: 5 attempts, 0.5 s doubling to at most
#: 10 s, each wait spread by +-50 % (about 7.5 s in all), then the fallback gets the same.
DEFAULT_DEAD_LETTER_RETRY = RetryPolicy.build(
    retries=4, retry_interval=0.5, backoff="exponential", max_retry_interval=10.0, jitter=0.5
)

_Store = Callable[[Message, Failure], Awaitable[bool]]

#: Longest handler error message written into a log line.
_LOGGED_ERROR_CHARS = 500


def now_ms() -> int:
    return int(time.time() * 1000)


class Settler:
    """Settles messages on ``consumer``; owns the dead-letter fallback chain and the gate that
    stops acknowledgements once the listener must stop.

    ``open`` is true while acks are allowed. Once closed (the listener is stopping after a
    fatal error, or shutdown cancelled its work) an ack or a dead letter becomes a hand-back:
    work that was cut short is never acknowledged. ``sealed`` drops every settle call (the
    consumer is closing; whatever it holds goes back to the broker).
    """

    def __init__(
        self,
        consumer: Consumer,
        *,
        dead_letter_producer: Producer | None = None,
        dead_letter_topic: str = "{topic}.dlq",
        fallback_topic: str | None = None,
        retry: RetryPolicy = DEFAULT_DEAD_LETTER_RETRY,
    ) -> None:
        self.consumer = consumer
        self.producer = dead_letter_producer
        self.dead_letter_topic = dead_letter_topic
        self.fallback_topic = fallback_topic
        self.retry = retry
        self.open = True
        self.sealed = False
        self._traced = False

    def close(self) -> None:
        """From now on hand messages back instead of acknowledging or dead-lettering them."""
        self.open = False

    # -- ack / hand back ---------------------------------------------------------------------

    async def ack(self, message: Message) -> bool:
        """Acknowledge ``message`` (hand it back instead once the gate is closed). Returns
        whether it was acknowledged."""
        if not self.open:
            await self.nack(message)
            return False
        try:
            await self.consumer.ack(message)
        except Exception as exc:
            settle_failed(message, exc)
        return True

    async def nack(self, message: Message) -> None:
        """Hand ``message`` back to the broker for redelivery."""
        if self.sealed:
            return
        try:
            await self.consumer.nack(message)
        except Exception as exc:
            settle_failed(message, exc)

    # -- dead letters ------------------------------------------------------------------------

    async def dead_letter(
        self, message: Message, failure: Failure, event_id: str | None = None
    ) -> bool:
        """Store ``message`` as a dead letter, then acknowledge it. Returns ``False`` when it
        was handed back instead (the gate is closed). Raises :class:`DeadLetterError` when
        neither the destination nor the fallback could store it."""
        if not self.open:
            await self.nack(message)
            return False
        where = await self._store(message, failure)
        self._log(where, message, failure, event_id)
        return await self.ack(message)

    def _log(self, where: str, message: Message, failure: Failure, event_id: str | None) -> None:
        logger.error(
            "%s message from %s%s%s: %s failure%s after %d attempt(s): %s: %s",
            where,
            loggable(message.topic),
            "" if message.offset is None else f" [{message.partition}@{message.offset}]",
            "" if event_id is None else f" (event {loggable(event_id)})",
            failure.reason,
            f" in {failure.handler}" if failure.handler else "",
            failure.attempts,
            failure.error_type,
            loggable(failure.error_message, _LOGGED_ERROR_CHARS),
        )

    async def retry_later(
        self,
        message: Message,
        retries: Sequence[RetryLater],
        failure: Failure | None = None,
        event_id: str | None = None,
    ) -> bool:
        """Have the consumer deliver ``message`` again later for each of ``retries`` (after
        storing the dead letter of ``failure``, another handler's final failure); the consumer
        settles it. Returns ``False`` when it was handed back instead (the gate is closed).
        Raises when the broker did not take the delayed copy (the caller hands it back)."""
        if not self.open:
            await self.nack(message)
            return False
        if failure is not None:
            where = await self._store(message, failure)
            self._log(where, message, failure, event_id)
        await self.consumer.retry_later(message, retries)
        return True

    async def _store(self, message: Message, failure: Failure) -> str:
        errors: list[str] = []
        stored = await self._attempts(self._primary, message, failure, "dead-letter", errors)
        if stored is not None:
            return "dead-lettered" if stored else "DROPPED (no dead-letter destination configured)"
        fallback = await self._attempts(self._fallback, message, failure, "fallback", errors)
        if fallback:
            return "dead-lettered to the fallback destination"
        if fallback is False:
            errors.append("fallback: none configured")
        raise DeadLetterError(
            f"could not dead-letter a message from {loggable(message.topic)} "
            f"({'; '.join(errors)}); stopping without acknowledging it: the broker keeps it. "
            "Fix the dead-letter destination (permissions, name, size limits) and restart"
        )

    async def _primary(self, message: Message, failure: Failure) -> bool:
        """``True``: stored; ``False``: there is no dead-letter destination at all."""
        if await self.consumer.dead_letter(message, failure):
            return True
        if self.producer is None:
            return False
        if message.undecodable is not None and message.undecodable.topic_unreadable:
            # Its topic cannot name a destination: the fallback takes it.
            return await self._fallback(message, failure)
        await self.producer.send(
            self.dead_letter_topic.replace("{topic}", message.topic),
            message.payload,
            headers=dead_letter_headers(message, failure),
            key=message.key,
        )
        return True

    async def _fallback(self, message: Message, failure: Failure) -> bool:
        """``True``: stored in the fallback; ``False``: there is no fallback."""
        if await self.consumer.dead_letter_fallback(message, failure):
            return True
        if self.producer is None or self.fallback_topic is None:
            return False
        await self.producer.send(
            self.fallback_topic,
            message.payload,
            headers=dead_letter_headers(message, failure),
            key=message.key,
        )
        return True

    async def _attempts(
        self,
        store: _Store,
        message: Message,
        failure: Failure,
        what: str,
        errors: list[str],
    ) -> bool | None:
        """Run ``store`` until it does not raise, at most ``retry.attempts`` times, waiting the
        policy's backoff in between. ``None``: every attempt raised (``errors`` says why)."""
        retry = self.retry
        attempt = 1
        while True:
            try:
                return await store(message, failure)
            except Exception as exc:
                again = retry.should_retry(exc, attempt)
                delay = retry.delay(attempt) if again else 0.0
                logger.warning(
                    "%s destination failed for a message from %s (attempt %d/%d: %s: %s)%s",
                    what,
                    loggable(message.topic),
                    attempt,
                    retry.attempts,
                    type(exc).__name__,
                    loggable(exc),
                    f"; retrying in {delay:.2f}s" if again else "",
                    exc_info=None if self._traced else exc,
                )
                self._traced = True
                if not again:
                    errors.append(f"{what}: {type(exc).__name__}: {loggable(exc)}")
                    return None
                await asyncio.sleep(delay)
                attempt += 1


def settle_failed(message: Message, exc: Exception) -> None:
    # The broker will redeliver what it did not hear about; the log says so.
    logger.warning(
        "could not settle message from %s (%s: %s); the broker will redeliver it",
        loggable(message.topic),
        type(exc).__name__,
        loggable(exc),
    )
