"""What a handler returns, put to use: events it publishes, or the reply to a request.

* A message that carries a reply-to header (sent with ``app.request()``): the handler's return
  value is the reply (see :mod:`dispytch.request`), sent before the request is acknowledged. A
  reply that cannot be sent is logged (the requester times out); it does not fail the handler.
* Any other message: an ``EventBase``, or a list or tuple of them, is emitted after the handler
  succeeded and before the message is acknowledged, so a crash runs the handler again and never
  loses an output. A failed emit fails the attempt: it is retried as the handler's policy says
  (the handler runs again), then the message is dead-lettered. Other return values are ignored,
  as Dispytch 0.10 did.

An output that does not set its own ``id`` gets one derived from the input event's id, the
handler and its position in what the handler returned: a handler that runs again on the same
event emits the same ids, which a downstream dedup store (:mod:`dispytch.dedup`) recognises.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from dispytch.errors import ListenerError
from dispytch.events import Envelope, EventBase
from dispytch.request import (
    CORRELATION_HEADER,
    REPLY_STATUS_HEADER,
    REPLY_TO_HEADER,
    REPLY_TYPE,
    reply_envelope,
)
from dispytch.seam import Failure, Message, Producer
from dispytch.untrusted import loggable

if TYPE_CHECKING:
    from dispytch.emitter.emitter import EventEmitter
    from dispytch.listener.pipeline import Route

__all__ = ["Outputs"]

logger = logging.getLogger("dispytch.listener")

#: Namespace of the ids derived for outputs (uuid5 of input id, handler and position).
_OUTPUT_IDS = uuid.UUID("6f1d7a52-5d0e-4c3e-9b8e-2f4a0f3c9d11")
#: Longest reply address accepted from a reply-to header.
_MAX_ADDRESS = 255


class Outputs:
    """Delivers handler return values through ``emitter`` (``None``: a listener without a
    producer, which can neither publish nor reply). ``stage`` (the consumer's
    :attr:`~dispytch.listener.consumer.Consumer.stage_outputs`) takes the events to publish
    instead, encoded, when the consumer publishes them with the message's ack."""

    def __init__(
        self,
        emitter: EventEmitter | None,
        stage: Callable[[Message, list[Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.emitter = emitter
        self.stage = stage
        producer = emitter.producer if emitter is not None else None
        self._reply_prefix = getattr(producer, "reply_prefix", Producer.reply_prefix)
        self._send_reply: Callable[[str, bytes, Mapping[str, str]], Awaitable[Any]] | None = None
        if isinstance(producer, Producer):
            self._send_reply = producer.send_reply
        elif emitter is not None:  # a seed-style producer: sent like an event
            send = emitter._send
            self._send_reply = lambda address, payload, headers: send(
                address, payload, None, headers, None
            )

    # -- the handler's return value -----------------------------------------------------------

    async def deliver(self, value: Any, route: Route, envelope: Envelope, message: Message) -> bool:
        """Use ``value`` (not ``None``), which ``route``'s handler returned for ``message``.
        Returns whether events were staged with the consumer's transaction (they are not
        published yet: the handler's success must not be recorded as final)."""
        headers = message.headers
        if headers:
            address = headers.get(REPLY_TO_HEADER)
            if address is not None:
                await self._reply(value, address, headers.get(CORRELATION_HEADER, ""), route)
                return False
        events = _events(value, route)
        if events:
            return await self.publish(events, route, envelope, message)
        return False

    async def publish(
        self, events: list[EventBase], route: Route, envelope: Envelope, message: Message
    ) -> bool:
        emitter = self.emitter
        if emitter is None:
            raise ListenerError(
                f"handler {route.name} returned {len(events)} event(s) to publish, but the "
                "listener has no producer; pass EventListener(emitter=...) (an App does)"
            )
        for index, event in enumerate(events):
            if "id" not in event.model_fields_set:
                derived = uuid.uuid5(_OUTPUT_IDS, f"{envelope.id}\x1f{route.key}\x1f{index}")
                events[index] = event.model_copy(update={"id": str(derived)})
        if self.stage is not None:
            await self.stage(message, emitter.outgoing(events))
            return True
        await emitter.emit_many(events)
        return False

    # -- replies ------------------------------------------------------------------------------

    def _address_ok(self, address: str) -> bool:
        return (
            address.startswith(self._reply_prefix)
            and len(address) <= _MAX_ADDRESS
            and address.isprintable()
            and not any(c.isspace() for c in address)
        )

    async def _reply(self, value: Any, address: str, correlation: str, route: Route) -> None:
        emitter = self.emitter
        if emitter is None:
            raise ListenerError(
                f"handler {route.name} answered a request, but the listener has no producer to "
                "send the reply with; pass EventListener(emitter=...) (an App does)"
            )
        payload = emitter.serializer.serialize(reply_envelope(value))
        await self._send(address, payload, correlation, "ok", route.name)

    async def reply_failure(self, message: Message, failure: Failure) -> None:
        """Tell the requester that the request in ``message`` failed for good (it was
        dead-lettered), if it is a request."""
        headers = message.headers
        address = headers.get(REPLY_TO_HEADER) if headers else None
        if address is None or self.emitter is None:
            return
        body = {
            "error_type": failure.error_type,
            "message": failure.error_message[:2048],
            "handler": failure.handler,
            "reason": failure.reason,
        }
        envelope = reply_envelope(body)
        envelope["type"] = REPLY_TYPE + ".error"
        payload = self.emitter.serializer.serialize(envelope)
        await self._send(
            address, payload, headers.get(CORRELATION_HEADER, ""), "error", failure.handler
        )

    async def _send(
        self, address: str, payload: bytes, correlation: str, status: str, handler: str | None
    ) -> None:
        if not self._address_ok(address):
            logger.warning(
                "not replying to %s from %s: a reply address starts with %r",
                loggable(address),
                handler or "the listener",
                self._reply_prefix,
            )
            return
        headers = {CORRELATION_HEADER: correlation, REPLY_STATUS_HEADER: status}
        if self._send_reply is None:
            return
        try:
            await self._send_reply(address, payload, headers)
        except Exception as exc:
            # The work was done; the requester will time out (and may ask again).
            logger.warning(
                "could not send the reply of %s to %s (%s: %s); the requester will time out",
                handler or "the listener",
                loggable(address),
                type(exc).__name__,
                loggable(exc),
            )


def _events(value: Any, route: Route) -> list[EventBase] | None:
    """The events in a handler's return value, or ``None`` when it holds none."""
    if isinstance(value, EventBase):
        return [value]
    if isinstance(value, list | tuple) and value:
        if all(isinstance(item, EventBase) for item in value):
            return list(value)
        if any(isinstance(item, EventBase) for item in value):
            kinds = sorted({type(item).__name__ for item in value})
            raise TypeError(
                f"handler {route.name} returned a {type(value).__name__} mixing events with "
                f"other values ({', '.join(kinds)}); return EventBase instances only"
            )
    return None
