"""Request/reply: ``await app.request(event)`` emits ``event`` and waits for the reply its
handler returns.

How it travels. The requesting app opens, on its first request, a private *reply inbox* on its
broker (:meth:`Backend.reply_inbox <dispytch.backend.Backend.reply_inbox>`: a RabbitMQ exclusive
auto-delete queue, a NATS inbox subject, a Redis stream with a TTL, a Kafka reply topic per
group filtered by correlation id, a topic of the memory broker). Each request carries two
headers: :data:`REPLY_TO_HEADER` (the inbox's address) and :data:`CORRELATION_HEADER` (a new
random id). A handler of the request replies by *returning* a value: an ``EventBase`` (the reply's
type is its ``__event_type__``), a pydantic model or a dict; the listener sends it to the
address with the same correlation id (:meth:`Producer.send_reply
<dispytch.emitter.producer.Producer.send_reply>`) before it acknowledges the request. A request
whose handler fails for good (it is dead-lettered) gets an error reply, and ``request`` raises
:class:`~dispytch.errors.RequestFailed`; no reply within ``timeout`` raises
:class:`~dispytch.errors.RequestTimeout`. The first reply wins; later ones (a second handler, a
redelivery) are dropped.

Replies are not kept: a reply that comes while no request waits for it (after the timeout, after
a restart) is dropped. A handler returning ``None`` sends no reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from dispytch.errors import PayloadValidationError, RequestFailed, RequestTimeout
from dispytch.events import Event, EventBase
from dispytch.routing import TopicPattern
from dispytch.serialization.deserializer import Deserializer
from dispytch.untrusted import loggable

if TYPE_CHECKING:
    from dispytch.backend import Backend
    from dispytch.emitter.emitter import EventEmitter
    from dispytch.listener.consumer import Consumer

__all__ = [
    "CORRELATION_HEADER",
    "REPLY_STATUS_HEADER",
    "REPLY_TO_HEADER",
    "ConsumerInbox",
    "ReplyInbox",
    "Requester",
    "reply_envelope",
]

logger = logging.getLogger("dispytch.request")

#: Header of a request: where its reply goes.
REPLY_TO_HEADER = "x-dispytch-reply-to"
#: Header of a request and of its reply: the id that pairs them.
CORRELATION_HEADER = "x-dispytch-correlation-id"
#: Header of a reply: ``ok``, or ``error`` when the request's handler failed for good.
REPLY_STATUS_HEADER = "x-dispytch-reply-status"
#: The type of a reply that is a model or a dict (an ``EventBase`` reply has its own type).
REPLY_TYPE = "dispytch.reply"

#: A reply as it arrives: payload bytes and headers.
Deliver = Callable[[bytes, Mapping[str, str]], None]

M = TypeVar("M", bound=BaseModel)


class ReplyInbox(ABC):
    """The private destination one app's replies arrive at.

    ``address`` is what requests carry in :data:`REPLY_TO_HEADER`; the replying side's producer
    sends there (:meth:`~dispytch.emitter.producer.Producer.send_reply`). :meth:`start` returns
    once a reply sent from now on is received; ``deliver`` is called on the event loop for each.
    """

    address: str

    @abstractmethod
    async def start(self, deliver: Deliver) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


class ConsumerInbox(ReplyInbox):
    """An inbox made of the backend's own consumer, in a group of its own, on the topic
    ``address``: for backends whose consumer can read a topic created on the fly (memory)."""

    def __init__(self, backend: Backend, address: str, delimiter: str) -> None:
        self.address = address
        self._consumer: Consumer = backend.consumer(address, prefetch=64)
        self._pattern = TopicPattern.parse(address, delimiter)
        self._task: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver) -> None:
        await self._consumer.start([self._pattern])
        self._task = asyncio.create_task(self._read(deliver), name="dispytch-replies")

    async def _read(self, deliver: Deliver) -> None:
        consumer = self._consumer
        async for message in consumer.listen():
            deliver(message.payload, message.headers)
            await consumer.ack(message)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._consumer.close()


def reply_envelope(value: Any) -> dict[str, Any]:
    """The envelope of a handler's reply: an ``EventBase`` as it would be emitted, a pydantic
    model or a dict as the body of a :data:`REPLY_TYPE` envelope. Raises TypeError otherwise."""
    if isinstance(value, EventBase):
        return value.envelope()
    if isinstance(value, BaseModel):
        body = value.model_dump(mode="json", by_alias=True)
    elif isinstance(value, dict):
        body = value
    else:
        raise TypeError(
            f"a handler's reply must be an EventBase, a pydantic model or a dict, got "
            f"{type(value).__name__}; return one of those (or None to send no reply)"
        )
    return {
        "id": str(uuid.uuid4()),
        "type": REPLY_TYPE,
        "body": body,
        "timestamp": int(time.time() * 1000),
    }


class Requester:
    """The requesting side of one app: its inbox (opened on the first request) and the
    requests waiting for their reply."""

    def __init__(
        self,
        open_inbox: Callable[[], ReplyInbox],
        emitter: EventEmitter,
        deserializer: Deserializer,
    ) -> None:
        self._open_inbox = open_inbox
        self._emitter = emitter
        self._deserializer = deserializer
        self._inbox: ReplyInbox | None = None
        self._opening = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[tuple[bytes, Mapping[str, str]]]] = {}

    async def _address(self) -> str:
        if self._inbox is None:
            async with self._opening:
                if self._inbox is None:
                    inbox = self._open_inbox()
                    await inbox.start(self._deliver)
                    self._inbox = inbox
        return self._inbox.address

    def _deliver(self, payload: bytes, headers: Mapping[str, str]) -> None:
        correlation = headers.get(CORRELATION_HEADER)
        waiter = self._waiting.get(correlation) if correlation is not None else None
        if waiter is None or waiter.done():
            logger.debug(
                "dropping a reply no request waits for (correlation id %s)",
                loggable(correlation),
            )
            return
        waiter.set_result((payload, headers))

    async def request(
        self,
        event: EventBase,
        timeout: float,
        reply: type[BaseModel] | None,
        headers: Mapping[str, str] | None,
    ) -> Any:
        address = await self._address()
        correlation = uuid.uuid4().hex
        waiter: asyncio.Future[tuple[bytes, Mapping[str, str]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[correlation] = waiter
        sent = {**(headers or {}), REPLY_TO_HEADER: address, CORRELATION_HEADER: correlation}
        try:
            await self._emitter.emit(event, headers=sent)
            async with asyncio.timeout(timeout):
                payload, reply_headers = await waiter
        except TimeoutError:
            raise RequestTimeout(
                f"no reply to {event.event_type()!r} event {event.id} within {timeout:g}s; "
                "is a service handling it running (and returning a value)? Raise timeout= "
                "if the handler is slow"
            ) from None
        finally:
            self._waiting.pop(correlation, None)
        return self._decode(event, payload, reply_headers, reply)

    def _decode(
        self,
        event: EventBase,
        payload: bytes,
        headers: Mapping[str, str],
        reply: type[BaseModel] | None,
    ) -> Any:
        envelope = self._deserializer.deserialize(payload)
        if headers.get(REPLY_STATUS_HEADER) == "error":
            body = envelope.body
            raise RequestFailed(
                f"the {event.event_type()!r} request {event.id} failed in "
                f"{loggable(body.get('handler') or 'the service')}: "
                f"{loggable(body.get('error_type'))}: {loggable(body.get('message'), 500)}",
                error_type=str(body.get("error_type") or ""),
                handler=body.get("handler"),
            )
        if reply is None:
            address = self._inbox.address if self._inbox is not None else ""
            return Event(
                envelope.id, envelope.type, address, envelope.body, envelope.timestamp, headers
            )
        body = envelope.body
        if issubclass(reply, EventBase) and "id" not in body:
            body = {**body, "id": envelope.id}
        try:
            return reply.model_validate(body)
        except ValidationError as exc:
            raise PayloadValidationError(
                f"the reply to {event.event_type()!r} event {event.id} does not match "
                f"{reply.__name__}: {exc.error_count()} error(s), first: "
                f"{loggable(exc.errors()[0].get('msg'))}"
            ) from None

    async def close(self) -> None:
        for waiter in self._waiting.values():
            waiter.cancel()
        self._waiting.clear()
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            await inbox.close()
