"""EventEmitter: turns an EventBase into an envelope and hands its bytes to a Producer."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel

from dispytch import allocator
from dispytch.emitter.calling import accepts, send_caller
from dispytch.events import EventBase, own_config
from dispytch.middleware import Outbound, PublishContext, chain, run_hooks, scope_methods
from dispytch.seam import Outgoing, Producer, ProducerTimeout
from dispytch.serialization.json import JSONSerializer
from dispytch.serialization.serializer import Serializer
from dispytch.topic_rules import GENERIC, TopicRules
from dispytch.untrusted import loggable

__all__ = ["EventEmitter"]

logger = logging.getLogger("dispytch.emitter")

TimeoutCallback = Callable[[EventBase], Awaitable[None] | None]

_TOPIC = EventBase.topic
_BACKEND_CONFIG = EventBase.backend_config
_new_tuple = tuple.__new__
#: Event classes whose _Kind an emitter remembers before the memo resets.
_KINDS = 1024


class _Kind(NamedTuple):
    """What the emits of one event class share."""

    #: The topic, when it has no placeholders (``None``: rendered per event).
    topic: str | None
    #: Whether ``backend_config`` is EventBase's (the per-event config, else the class's).
    plain: bool


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

    ``middleware`` (:class:`~dispytch.middleware.Middleware` with a ``publish`` scope) wraps
    each emit and emit_many, outermost first.
    """

    def __init__(
        self,
        producer: Producer,
        serializer: Serializer | None = None,
        *,
        topic_rules: TopicRules | None = None,
        middleware: Sequence[object] | None = None,
    ) -> None:
        allocator.prime()
        self.producer = producer
        self.serializer = serializer or JSONSerializer()
        # A serializer written for 0.10 has only serialize(dict).
        self._serialize_event: Callable[[EventBase, int | None], bytes] = getattr(
            self.serializer, "serialize_event", None
        ) or (lambda event, timestamp_ms: self.serializer.serialize(event.envelope(timestamp_ms)))
        self._serialize_events: Callable[[Sequence[EventBase], int], list[bytes]] = getattr(
            self.serializer, "serialize_events", None
        ) or (lambda events, timestamp_ms: [self._serialize_event(e, timestamp_ms) for e in events])
        rules = topic_rules or getattr(producer, "topic_rules", None)
        self.topic_rules: TopicRules = rules if isinstance(rules, TopicRules) else GENERIC
        self._on_timeout: TimeoutCallback | None = None
        # send's convention (keywords as 0.10 called it, or positional; key/headers if taken),
        # read once here, never per emit; None: the standard signature, called directly.
        self._call = send_caller(producer.send)
        # A send with the standard signature that is a coroutine function: emit() hands its
        # coroutine to the caller as it is.
        self._plain_send = self._call is None and inspect.iscoroutinefunction(producer.send)
        # Producer's own send_many passes key= and headers=, which a seed-era send may refuse.
        self._batched = (
            isinstance(producer, Producer) and type(producer).send_many is not Producer.send_many
        )
        self._drops_headers = not accepts(producer.send, "headers")
        self._warned_headers = False
        publish = scope_methods(middleware or (), "publish")
        self._after = tuple(scope_methods(middleware or (), "after_publish"))
        self._publish: Callable[[PublishContext], Awaitable[None]] | None = (
            chain(publish, self._publish_terminal) if publish or self._after else None
        )
        self._kinds: dict[type[EventBase], _Kind] = {}

    def on_timeout(self, callback: TimeoutCallback) -> TimeoutCallback:
        """Register ``callback(event)`` (sync or async) to be called when an emit times out."""
        self._on_timeout = callback
        return callback

    def encode(self, event: EventBase, timestamp_ms: int | None = None) -> tuple[str, bytes]:
        """The concrete topic and the bytes for ``event``."""
        return self._topic(event), self._serialize_event(event, timestamp_ms)

    def _topic(self, event: EventBase) -> str:
        cls = type(event)
        topic = (self._kinds.get(cls) or self._learn(cls)).topic
        return event.topic(self.topic_rules) if topic is None else topic

    def _learn(self, cls: type[EventBase]) -> _Kind:
        """What every event of ``cls`` shares, read on its first emit."""
        template = cls.__topic_template__
        kind = _Kind(
            # A topic without placeholders: nothing to fill or check.
            template.fixed if template is not None and cls.topic is _TOPIC else None,
            cls.backend_config is _BACKEND_CONFIG,
        )
        if len(self._kinds) >= _KINDS:  # classes made on the fly: keep the memo bounded
            self._kinds.clear()
        self._kinds[cls] = kind
        return kind

    def _send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None,
        headers: Mapping[str, str] | None,
        key: bytes | None,
    ) -> Awaitable[Any]:
        if self._call is None:
            return self.producer.send(topic, payload, config, headers=headers, key=key)
        if headers and self._drops_headers:
            self._headers_dropped()
        return self._call(topic, payload, config, key, headers)

    def _headers_dropped(self) -> None:
        if not self._warned_headers:
            self._warned_headers = True
            logger.warning(
                "%s.send() takes no 'headers' argument; emitted events carry no headers. "
                "Add 'headers: Mapping[str, str] | None = None' to it (or subclass Producer)",
                type(self.producer).__name__,
            )

    async def emit(self, event: EventBase, *, headers: Mapping[str, str] | None = None) -> None:
        """Send one event with optional ``headers``; return after the broker confirmed it
        (and raise otherwise)."""
        if self._publish is not None or self._on_timeout is not None or not self._plain_send:
            await self._emit(event, headers)
            return
        topic, payload, config, key = self._prepare(event)
        await self.producer.send(topic, payload, config, headers=headers, key=key)

    def _prepare(self, event: EventBase) -> tuple[str, bytes, BaseModel | None, bytes | None]:
        """The topic, bytes, backend config and ordering key of one event."""
        cls = type(event)
        kind = self._kinds.get(cls) or self._learn(cls)
        topic = kind.topic if kind.topic is not None else event.topic(self.topic_rules)
        config = (
            (own_config(event) or cls.__backend_config__) if kind.plain else event.backend_config
        )
        payload = self._serialize_event(event, None)
        return topic, payload, config, None if config is None else ordering_key(config)

    async def _emit(self, event: EventBase, headers: Mapping[str, str] | None) -> None:
        try:
            if self._publish is None:
                topic, payload, config, key = self._prepare(event)
                await self._send(topic, payload, config, headers, key)
            else:
                await self._published(PublishContext([self._outbound(event, headers)], False))
        except ProducerTimeout:
            if self._on_timeout is None:
                raise
            logger.warning("emit of %s event %s timed out", event.event_type(), loggable(event.id))
            result = self._on_timeout(event)
            if inspect.isawaitable(result):
                await result

    async def emit_many(
        self, events: Iterable[EventBase], *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send many events at once, confirms pipelined; return after every one was confirmed.
        ``headers`` go with every event.

        Raises the first failure after every send has settled (each event is either confirmed
        or reported).
        """
        now = int(time.time() * 1000)
        if self._publish is not None:
            batch = [self._outbound(event, headers, now) for event in events]
            await self._published(PublishContext(batch, True))
            return
        results = await self._send_many(self.outgoing(events, headers, now))
        errors = [e for e in results if e is not None]
        if errors:
            raise errors[0]

    def outgoing(
        self,
        events: Iterable[EventBase],
        headers: Mapping[str, str] | None = None,
        timestamp_ms: int | None = None,
    ) -> list[Outgoing]:
        """``events`` encoded for :meth:`Producer.send_many`, not sent."""
        now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        events = events if isinstance(events, list | tuple) else list(events)
        out: list[Outgoing] = []
        append = out.append
        kinds, last = self._kinds, None
        topic: str | None = None
        default: BaseModel | None = None
        plain = True
        for event, payload in zip(events, self._serialize_events(events, now), strict=True):
            cls = type(event)
            if cls is not last:
                last = cls
                topic, plain = kinds.get(cls) or self._learn(cls)
                default = cls.__backend_config__
            config = (own_config(event) or default) if plain else event.backend_config
            # A named tuple built without its Python-level __new__ (a third of the cost).
            append(
                _new_tuple(
                    Outgoing,
                    (
                        self._topic(event) if topic is None else topic,
                        payload,
                        config,
                        None if config is None else ordering_key(config),
                        headers,
                    ),
                )
            )
        return out

    async def _send_many(self, outgoing: list[Outgoing]) -> list[BaseException | None]:
        if self._batched:
            return await self.producer.send_many(outgoing)
        # A seed-era producer (or one without a send_many of its own): concurrent sends.
        results = await asyncio.gather(
            *(self._send(m.topic, m.payload, m.config, m.headers, m.key) for m in outgoing),
            return_exceptions=True,
        )
        return [r if isinstance(r, BaseException) else None for r in results]

    # -- with publish middleware --------------------------------------------------------------

    async def _published(self, context: PublishContext) -> None:
        """The ``publish`` chain, then the ``after_publish`` hooks (also when it raised)."""
        assert self._publish is not None
        if not self._after:
            return await self._publish(context)
        try:
            await self._publish(context)
        finally:
            run_hooks(self._after, context)

    def _outbound(
        self,
        event: EventBase,
        headers: Mapping[str, str] | None,
        timestamp_ms: int | None = None,
    ) -> Outbound:
        topic, payload = self.encode(event, timestamp_ms)
        key = ordering_key(event.backend_config)
        return Outbound(topic, payload, dict(headers) if headers else {}, key, event)

    async def _publish_terminal(self, context: PublishContext) -> None:
        messages = context.messages
        if not context.batch:
            (m,) = messages
            try:
                await self._send(m.topic, m.payload, m.event.backend_config, m.headers, m.key)
            except Exception as exc:
                context.errors = [exc]
                raise
            context.errors = [None]
            return
        outgoing = [
            Outgoing(m.topic, m.payload, m.event.backend_config, m.key, m.headers) for m in messages
        ]
        context.errors = errors = await self._send_many(outgoing)
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
