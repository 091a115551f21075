"""EventEmitter: turns an EventBase into an envelope and hands its bytes to a Producer."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pydantic import BaseModel

from dispytch.emitter.calling import send_caller
from dispytch.emitter.producer import Outgoing, Producer, ProducerTimeout
from dispytch.events import EventBase
from dispytch.serialization.json import JSONSerializer
from dispytch.serialization.serializer import Serializer
from dispytch.topic_rules import GENERIC, TopicRules

__all__ = ["EventEmitter"]

logger = logging.getLogger("dispytch.emitter")

TimeoutCallback = Callable[[EventBase], Awaitable[None] | None]


def ordering_key(config: BaseModel | None) -> bytes | None:
    """The ordering key of an event: its backend config's ``partition_key``, as bytes."""
    key = getattr(config, "partition_key", None) if config is not None else None
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode()


class EventEmitter:
    """Emits events through ``producer``.

    ``await emitter.emit(event)`` returns once the broker confirmed the event and raises
    otherwise. If the broker times out and a callback was registered with :meth:`on_timeout`,
    the callback is called instead of raising (the seed's behaviour).

    Every value that fills a ``{placeholder}`` of a topic is checked against ``topic_rules``
    before anything is sent (:class:`~dispytch.errors.InvalidTopicError` otherwise): by
    default the producer's (``producer.topic_rules``, which Dispytch's producers declare),
    else :data:`dispytch.topic_rules.GENERIC` (neither ``.`` nor ``:``, no wildcard).
    """

    def __init__(
        self,
        producer: Producer,
        serializer: Serializer | None = None,
        *,
        topic_rules: TopicRules | None = None,
    ) -> None:
        self.producer = producer
        self.serializer = serializer or JSONSerializer()
        rules = topic_rules or getattr(producer, "topic_rules", None)
        self.topic_rules: TopicRules = rules if isinstance(rules, TopicRules) else GENERIC
        self._on_timeout: TimeoutCallback | None = None
        # send's convention (keywords as 0.10 called it, or positional; key/headers if taken),
        # read once here, never per emit; None: the standard signature, called directly.
        self._call = send_caller(producer.send)
        # Producer's own send_many passes key= and headers=, which a seed-era send may refuse.
        self._batched = (
            isinstance(producer, Producer) and type(producer).send_many is not Producer.send_many
        )

    def on_timeout(self, callback: TimeoutCallback) -> TimeoutCallback:
        """Register ``callback(event)`` (sync or async) to be called when an emit times out."""
        self._on_timeout = callback
        return callback

    def encode(self, event: EventBase, timestamp_ms: int | None = None) -> tuple[str, bytes]:
        """The concrete topic and the bytes for ``event``."""
        return event.topic(self.topic_rules), self.serializer.serialize(
            event.envelope(timestamp_ms)
        )

    def _send(self, event: EventBase, timestamp_ms: int | None = None) -> Awaitable[Any]:
        topic, payload = self.encode(event, timestamp_ms)
        config = event.backend_config
        if self._call is None:
            return self.producer.send(topic, payload, config, key=ordering_key(config))
        return self._call(topic, payload, config, ordering_key(config), None)

    async def emit(self, event: EventBase) -> None:
        """Send one event; return after the broker confirmed it."""
        try:
            await self._send(event)
        except ProducerTimeout:
            if self._on_timeout is None:
                raise
            logger.warning("emit of %s event %s timed out", event.event_type(), event.id)
            result = self._on_timeout(event)
            if inspect.isawaitable(result):
                await result

    async def emit_many(self, events: Iterable[EventBase]) -> None:
        """Send many events at once, confirms pipelined; return after every one was confirmed.

        Raises the first failure after every send has settled (each event is either confirmed
        or reported).
        """
        now = int(time.time() * 1000)
        if self._batched:
            outgoing = []
            for event in events:
                topic, payload = self.encode(event, now)
                config = event.backend_config
                outgoing.append(Outgoing(topic, payload, config, ordering_key(config)))
            errors = [e for e in await self.producer.send_many(outgoing) if e is not None]
        else:  # a seed-era producer: concurrent sends
            results = await asyncio.gather(
                *(self._send(event, now) for event in events), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
