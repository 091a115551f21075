"""Dead letters on RabbitMQ.

Layout (all durable, declared on first use):

* one direct exchange, ``dispytch.dlq`` by default, kept apart from the event exchange so a
  consumer bound to ``orders.*`` never receives a dead letter;
* **one classic queue per consumer group**, ``dispytch.dlq.<group>`` (for a consumer of queues
  you declared: ``dispytch.dlq.<first queue's name>``), bound to that exchange with its own name
  as the routing key. However many topics fail, a group has one dead-letter queue; the
  original topic (the routing key) is in the ``x-dispytch-original-topic`` header, and
  :func:`read_dead_letters` filters on it. A name over AMQP's 255 bytes is cut and given a
  hash suffix, so it is always valid;
* a **fallback queue per group**, ``dispytch.dlq-fallback.<group>``, written through the default
  exchange when the dead-letter queue keeps failing (its exchange deleted or re-declared with
  another type, the queue over a length limit...).

Each dead letter is the original body with the original headers and properties, plus
``x-dispytch-*`` headers saying what failed. It is published with ``mandatory`` and a
publisher confirm; the listener acks the original message only after that confirm.

Before this layout, dead letters went to one ``<topic>.dlq`` queue per topic.
:func:`read_dead_letters` still reads those, so nothing already stored there is lost from
view; new dead letters never go there.

RabbitMQ's own dead-lettering (``x-dead-letter-exchange``) is not used because it cannot add
the failure details.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq.abc import DeliveredMessage

from dispytch.dead_letter import DeadLetter, dead_letter_topic
from dispytch.errors import ConfigurationError, EmitError
from dispytch.listener.consumer import Failure, Message
from dispytch.rabbitmq import _compat
from dispytch.rabbitmq.wire import (
    DELIVERY_COUNT_HEADER,
    HEADER_B64_PREFIX,
    KEY_HEADER,
    TOPIC_B64_HEADER,
    UNDECODABLE_HEADER,
    decode_key,
    encode_key,
    printable,
    publish_confirmed,
    safe_headers,
    str_headers,
    wait_reconnected,
)

__all__ = [
    "DEFAULT_DEAD_LETTER_EXCHANGE",
    "DeadLetterStore",
    "dead_letter_queue",
    "fallback_queue",
    "read_dead_letters",
]

DEFAULT_DEAD_LETTER_EXCHANGE = "dispytch.dlq"
QUEUE_PREFIX = "dispytch.dlq."
FALLBACK_PREFIX = "dispytch.dlq-fallback."
#: AMQP short strings (queue names, routing keys) hold at most this many bytes.
MAX_NAME_BYTES = 255
#: Most messages of one queue :func:`read_dead_letters` looks at.
SCAN_LIMIT = 10_000
_OURS = "x-dispytch-"


def _bounded(prefix: str, group: str) -> str:
    name = prefix + group
    data = name.encode()
    if len(data) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(group.encode()).hexdigest()[:12]
    head = data[: MAX_NAME_BYTES - len(digest) - 1].decode("utf-8", "ignore")
    return f"{head}-{digest}"


def dead_letter_queue(group: str) -> str:
    """The dead-letter queue of consumer group ``group`` (at most 255 bytes)."""
    return _bounded(QUEUE_PREFIX, group)


def fallback_queue(group: str) -> str:
    """The fallback dead-letter queue of consumer group ``group`` (at most 255 bytes)."""
    return _bounded(FALLBACK_PREFIX, group)


ChannelSource = AbstractChannel | Callable[[], AbstractChannel]


class DeadLetterStore:
    """Publishes dead letters through ``channel`` (which must have publisher confirms on).

    ``channel`` may be a callable returning the channel, for channels that exist only later.
    """

    def __init__(
        self,
        channel: ChannelSource,
        exchange: str = DEFAULT_DEAD_LETTER_EXCHANGE,
        *,
        timeout: float | None = 30.0,
    ) -> None:
        self._channel_source = channel
        self.exchange_name = exchange
        self.timeout = timeout
        self._exchange: AbstractExchange | None = None
        self._declared: set[str] = set()
        self._lock = asyncio.Lock()

    def _channel(self) -> AbstractChannel:
        source = self._channel_source
        return source if isinstance(source, AbstractChannel) else source()

    def _check_confirms(self, channel: AbstractChannel) -> None:
        if not getattr(channel, "publisher_confirms", True):
            raise ConfigurationError(
                "dead letters need publisher confirms, but the channel was opened with "
                "publisher_confirms=False; open it with publisher_confirms=True or pass "
                "dead_letter_exchange=None to the consumer"
            )

    async def _destination(self, queue: str) -> AbstractExchange:
        exchange = self._exchange
        if exchange is not None and queue in self._declared:
            return exchange
        async with self._lock:
            channel = self._channel()
            if self._exchange is None:
                self._check_confirms(channel)
                self._exchange = await channel.declare_exchange(
                    self.exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
                )
            if queue not in self._declared:
                declared = await channel.declare_queue(queue, durable=True)
                await declared.bind(self._exchange, routing_key=queue)
                self._declared.add(queue)
            return self._exchange

    async def put(self, message: Message, failure: Failure, group: str) -> None:
        """Store ``message``'s original bytes with failure headers in ``group``'s dead-letter
        queue; return once confirmed."""
        queue = dead_letter_queue(group)
        try:
            exchange = await self._destination(queue)
            await publish_confirmed(exchange, _dead_letter(message, failure), queue, self.timeout)
        except Exception:
            # Declare again next time: the exchange or queue may have been deleted since.
            self._exchange = None
            self._declared.discard(queue)
            raise

    async def put_fallback(self, message: Message, failure: Failure, group: str) -> None:
        """Store ``message`` in ``group``'s fallback queue, through the default exchange."""
        queue = fallback_queue(group)
        channel = self._channel()
        self._check_confirms(channel)
        await wait_reconnected(channel.default_exchange, queue, self.timeout)
        if queue not in self._declared:
            await channel.declare_queue(queue, durable=True)
            self._declared.add(queue)
        try:
            await publish_confirmed(
                channel.default_exchange, _dead_letter(message, failure), queue, self.timeout
            )
        except Exception:
            self._declared.discard(queue)
            raise

    async def put_delayed(
        self, queue: str, delay_ms: int, payload: bytes, key: bytes | None, headers: dict[str, str]
    ) -> None:
        """Store a broker-delayed retry for the group queue ``queue``: in the delay queue of
        ``delay_ms`` (see :func:`delay_queue`), whose messages expire into ``queue`` through
        the default exchange. Returns once confirmed."""
        name = delay_queue(queue, delay_ms)
        channel = self._channel()
        self._check_confirms(channel)
        if name not in self._declared:
            await channel.declare_queue(
                name,
                durable=True,
                arguments={
                    "x-message-ttl": delay_ms,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue,
                },
            )
            self._declared.add(name)
        out: dict[str, Any] = dict(headers)
        if key is not None:
            out[KEY_HEADER] = encode_key(key)
        message = aio_pika.Message(
            payload, headers=out, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        try:
            await publish_confirmed(channel.default_exchange, message, name, self.timeout)
        except Exception:
            self._declared.discard(name)
            raise


def delay_queue(queue: str, delay_ms: int) -> str:
    """The delay queue of group queue ``queue`` for ``delay_ms``: ``dispytch.retry.<ms>ms.<queue>``
    (at most 255 bytes)."""
    return _bounded(f"dispytch.retry.{delay_ms}ms.", queue)


def _adapter_header(name: str) -> bool:
    return name in (UNDECODABLE_HEADER, TOPIC_B64_HEADER) or name.startswith(HEADER_B64_PREFIX)


def _dead_letter(message: Message, failure: Failure) -> aio_pika.Message:
    """The dead letter of ``message``: its body, headers and properties, and what failed."""
    delivered = message.extra
    props = delivered.header.properties if isinstance(delivered, DeliveredMessage) else None
    raw = props.headers if props is not None else message.headers
    headers: dict[str, Any] = {}
    for name, value in safe_headers(raw).items():
        if name != DELIVERY_COUNT_HEADER and (
            not name.startswith(_OURS) or name.startswith(HEADER_B64_PREFIX)
        ):
            # pamqp decodes non-UTF-8 strings to bytes but can only encode bytearray.
            headers[name] = bytearray(value) if isinstance(value, bytes) else value
    undecodable = _compat.undecodable(delivered.header) if props is not None else ()
    own = message.headers
    if UNDECODABLE_HEADER in own:
        # Written by the adapter, not by the publisher: not to be forwarded as incoming ones.
        own = {k: v for k, v in own.items() if not _adapter_header(k)}
    ours = failure.headers(dataclasses.replace(message, headers=own))
    headers.update((k, v) for k, v in ours.items() if k.startswith(_OURS) or k not in headers)
    if message.key is not None:
        headers[KEY_HEADER] = encode_key(message.key)
    for name in (UNDECODABLE_HEADER, TOPIC_B64_HEADER):
        if name in message.headers:
            headers[name] = message.headers[name]
    properties: dict[str, Any] = {}
    if props is not None:
        if delivered.exchange:
            headers["x-dispytch-original-exchange"] = printable(delivered.exchange)[0]
        if props.message_id and "message-id" not in undecodable:
            # Not reused as the dead letter's own message_id: aiormq matches returns to
            # publishes by message_id, which must be unique among in-flight publishes.
            headers["x-dispytch-original-message-id"] = props.message_id
        # expiration and user_id are dropped on purpose: a dead letter must not expire, and
        # the broker rejects a user_id that is not the publishing connection's user. A
        # property that could not be decoded is dropped too (x-dispytch-undecodable says so).
        properties = {
            name: None if name.replace("_", "-") in undecodable else getattr(props, name)
            for name in (
                "content_type",
                "content_encoding",
                "correlation_id",
                "reply_to",
                "app_id",
                "priority",
                "timestamp",
            )
        }
        properties["type"] = None if "message-type" in undecodable else props.message_type
    return aio_pika.Message(
        message.payload,
        headers=headers,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        **properties,
    )


async def read_dead_letters(
    connection: AbstractConnection, topic: str, limit: int = 100, groups: Iterable[str] = ()
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``topic``, oldest first, left in their queues.

    Reads the dead-letter and fallback queues of ``groups`` (keeping the dead letters of
    ``topic``) and the per-topic queue ``<topic>.dlq`` of earlier versions, with ``basic.get``
    on a short-lived channel, and hands everything back with ``basic.nack(multiple,
    requeue)``: a classic queue puts requeued messages back in their original positions.
    Messages are invisible to other readers for the few milliseconds this takes, and come back
    with the ``redelivered`` flag set. At most 10,000 messages of each queue are looked at.
    """
    transport = connection.transport
    if transport is None:
        raise EmitError("not connected to RabbitMQ; call connect() (or start the app) first")
    queues = [(dead_letter_topic(topic), False)]
    for group in dict.fromkeys(groups):
        queues += [(dead_letter_queue(group), True), (fallback_queue(group), True)]
    out: list[DeadLetter] = []
    for queue, shared in queues:
        if len(queue.encode()) > MAX_NAME_BYTES:
            continue  # no such queue can exist
        out += await _read_queue(transport.connection, queue, topic, shared)
    out.sort(key=lambda letter: int(letter.headers.get("x-dispytch-failed-at", "0") or 0))
    return out[:limit]


async def _read_queue(amqp: Any, queue: str, topic: str, shared: bool) -> list[DeadLetter]:
    # A plain aiormq channel: a robust one would try to reopen itself after the broker closes
    # it, which a passive declare of a missing queue does (404).
    channel = await amqp.channel()
    out: list[DeadLetter] = []
    try:
        try:
            declared = await channel.queue_declare(queue, passive=True)
        except (aiormq.exceptions.ChannelNotFoundEntity, ValueError):
            return []  # no such queue, or a name no queue can have
        last_tag: int | None = None
        for _ in range(min(SCAN_LIMIT, declared.message_count or 0)):
            got: DeliveredMessage = await channel.basic_get(queue, no_ack=False)
            if not isinstance(got.delivery, aiormq.spec.Basic.GetOk):
                break
            last_tag = got.delivery.delivery_tag
            raw = got.header.properties.headers or {}
            headers = str_headers(raw)
            original = headers.get("x-dispytch-original-topic", topic)
            if shared and original != topic:
                continue
            out.append(
                DeadLetter(
                    topic=original,
                    payload=got.body,
                    headers=headers,
                    key=decode_key(raw.get(KEY_HEADER)),
                )
            )
        if last_tag is not None:
            await channel.basic_nack(last_tag, multiple=True, requeue=True)
    finally:
        if not channel.is_closed:
            await channel.close()
    return out
