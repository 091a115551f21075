"""How Dispytch data maps onto AMQP: the key header, incoming deliveries, confirmed publishes.

A delivery whose routing key, exchange, properties or header names are not UTF-8 (or whose
timestamp is out of range) cannot be handled: it is decoded leniently (see
:mod:`dispytch.rabbitmq._compat`) and :func:`lenient_message` turns it into a message for its
dead letter, in the form every backend uses (:mod:`dispytch.poison`): the routing key as
printable text with its raw bytes base64-encoded in ``x-dispytch-original-topic-b64``, a header
whose name is not UTF-8 as ``x-dispytch-undecodable-header-<n>: <base64 name>:<base64 value>``,
and ``x-dispytch-undecodable`` naming what could not be decoded (``topic``, ``headers``,
``properties``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Container
from typing import Any, NamedTuple

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustChannel
from aiormq.abc import DeliveredMessage

from dispytch.emitter.producer import ProducerTimeout
from dispytch.errors import EmitError
from dispytch.listener.consumer import Message
from dispytch.poison import (
    HEADER_B64_PREFIX,
    TOPIC_B64_HEADER,
    UNDECODABLE_HEADER,
    Undecodable,
    b64,
    header_pair,
    shown,
)
from dispytch.untrusted import loggable

__all__ = [
    "DELIVERY_COUNT_HEADER",
    "HEADER_B64_PREFIX",
    "KEY_HEADER",
    "TOPIC_B64_HEADER",
    "UNDECODABLE_HEADER",
    "Decoded",
    "PublishRefusedError",
    "confirm_error",
    "decode_key",
    "encode_key",
    "lenient_message",
    "publish_confirmed",
    "publish_error",
    "str_headers",
    "to_message",
    "wait_reconnected",
]

#: Carries the ordering key (AMQP has no message key of its own).
KEY_HEADER = "x-dispytch-key"
#: Set by quorum queues: how many times the message was delivered before.
DELIVERY_COUNT_HEADER = "x-delivery-count"


def encode_key(key: bytes) -> str | bytearray:
    """A key as an AMQP header value: a string when it is UTF-8 (readable by any client)."""
    try:
        return key.decode()
    except UnicodeDecodeError:
        return bytearray(key)


def decode_key(value: Any) -> bytes | None:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return None if value is None else str(value).encode()


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    return str(value)


def str_headers(raw: Any) -> dict[str, str]:
    """AMQP headers with every value as a string."""
    if not raw:
        return {}
    return {name: _str(value) for name, value in raw.items()}


def to_message(delivered: DeliveredMessage, counted: Container[str] = ()) -> Message:
    """The listener's view of one delivery; aiormq's message rides along in ``extra``.

    ``counted`` holds the consumer tags of quorum queues: only there does RabbitMQ write
    ``x-delivery-count`` itself, and only on a redelivery (a first delivery, and any delivery
    from a classic queue, carries whatever the publisher set). So the header gives the attempt
    only on a redelivery from a quorum queue; elsewhere a redelivery is attempt 2.
    """
    delivery = delivered.delivery
    properties = delivered.header.properties
    raw = properties.headers
    headers: dict[str, str] = {}
    key: bytes | None = None
    redelivered = delivery.redelivered  # type: ignore[union-attr]
    attempt = 2 if redelivered else 1
    if raw:
        for name, value in raw.items():
            if name == KEY_HEADER:
                key = decode_key(value)
            elif (
                name == DELIVERY_COUNT_HEADER
                and redelivered
                and isinstance(value, int)
                and delivery.consumer_tag in counted  # type: ignore[union-attr]
            ):
                # Quorum queues count every earlier delivery: the exact attempt number.
                attempt = value + 1
            headers[name] = _str(value)
    return Message(
        topic=delivery.routing_key or "",  # type: ignore[union-attr]
        payload=delivered.body,
        key=key,
        headers=headers,
        delivery_attempt=attempt,
        extra=delivered,
        message_id=properties.message_id,
    )


def printable(text: str) -> tuple[str, bytes | None]:
    """A leniently decoded string as text safe anywhere, and its raw bytes when they were not
    UTF-8 (``None`` when the text is exact)."""
    if text.isascii():
        return text, None
    try:
        text.encode()
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        return shown(raw), raw
    return text, None


def _raw(value: Any) -> bytes:
    """A header value's bytes (for a header whose name was not UTF-8)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return str(value).encode("utf-8", "backslashreplace")


def _safe(value: Any) -> Any:
    """A header value with its undecodable strings turned back into their bytes."""
    if isinstance(value, str):
        raw = printable(value)[1]
        return value if raw is None else bytearray(raw)
    if isinstance(value, dict):
        return safe_headers(value)
    if isinstance(value, list):
        return [_safe(v) for v in value]
    return value


def safe_headers(raw: Any) -> dict[str, Any]:
    """AMQP headers that any client can encode again (for a dead letter): a header whose name
    was not UTF-8 becomes ``x-dispytch-undecodable-header-<n>``."""
    out: dict[str, Any] = {}
    for index, (name, value) in enumerate((raw or {}).items()):
        name_bytes = printable(name)[1]
        if name_bytes is None:
            out[name] = _safe(value)
        else:
            pair_name, pair = header_pair(index, name_bytes, _raw(value))
            out[pair_name] = pair
    return out


def undecodable_parts(marks: tuple[str, ...]) -> str:
    """``x-dispytch-undecodable`` for the fields the lenient decoder marked: ``topic``,
    ``headers`` and ``properties``, as on the other backends."""
    parts = {
        "topic"
        if mark == "routing-key"
        else "headers"
        if mark.startswith("header-")
        else "properties"
        for mark in marks
    }
    return ",".join(p for p in ("topic", "headers", "properties") if p in parts)


class Decoded(NamedTuple):
    """A delivery decoded leniently: its message, and why no handler can take it."""

    message: Message
    problem: str


def lenient_message(delivered: DeliveredMessage, undecodable: tuple[str, ...]) -> Decoded:
    """The message of a delivery parts of which could not be decoded; never raises."""
    delivery: Any = delivered.delivery
    topic, raw_topic = printable(delivery.routing_key or "")
    safe = safe_headers(_headers_of(delivered))
    headers = {name: _str(value) for name, value in safe.items()}
    key = decode_key(safe.get(KEY_HEADER))
    headers[UNDECODABLE_HEADER] = undecodable_parts(undecodable)
    if raw_topic is not None:
        headers[TOPIC_B64_HEADER] = b64(raw_topic)
    message = Message(
        topic=topic,
        payload=delivered.body,
        key=key,
        headers=headers,
        delivery_attempt=2 if delivery.redelivered else 1,
        extra=delivered,
    )
    problem = f"{loggable(', '.join(undecodable))} of the delivery could not be decoded"
    # The dead-letter store reads the raw parts from the delivery itself: no headers here.
    message.undecodable = Undecodable(tuple(headers[UNDECODABLE_HEADER].split(",")), problem)
    return Decoded(message, problem)


def _headers_of(delivered: DeliveredMessage) -> Any:
    properties = getattr(delivered.header, "properties", None)
    return getattr(properties, "headers", None)


async def publish_confirmed(
    exchange: AbstractExchange,
    message: aio_pika.Message,
    routing_key: str,
    timeout: float | None,
) -> None:
    """Publish with ``mandatory`` and wait for the publisher confirm; raise unless routed+stored.

    RabbitMQ confirms unroutable messages too, so a ``basic.return`` is what tells us the
    message reached no queue.
    """
    await wait_reconnected(exchange, routing_key, timeout)
    try:
        result = await exchange.publish(message, routing_key, mandatory=True, timeout=timeout)
    except Exception as exc:
        raise publish_error(exc, exchange.name, routing_key, timeout) from exc
    if isinstance(result, DeliveredMessage):  # a channel opened with on_return_raises=False
        raise _unroutable(exchange.name, routing_key)


async def wait_reconnected(
    exchange: AbstractExchange, routing_key: str, timeout: float | None
) -> None:
    """On a robust channel that is reconnecting, wait (up to ``timeout``) until it is back."""
    channel = getattr(exchange, "channel", None)  # not on the abstract class, on every exchange
    if isinstance(channel, AbstractRobustChannel) and channel.is_closed:
        # Reconnecting: wait for the channel to come back rather than fail a publish that
        # would very likely succeed in a moment (bounded by the same timeout as the confirm).
        try:
            await asyncio.wait_for(channel.ready(), timeout)
        except TimeoutError as exc:
            raise ProducerTimeout(
                f"the RabbitMQ connection was not back within {timeout}s; the message for "
                f"{routing_key!r} was not sent"
            ) from exc


class PublishRefusedError(EmitError):
    """RabbitMQ answered a publish with ``basic.nack``."""


def confirm_error(result: Any, exchange: str, routing_key: str) -> EmitError | None:
    """What a publisher confirm's outcome means: ``None`` when RabbitMQ stored the message."""
    if isinstance(result, DeliveredMessage):  # returned: no queue is bound for the key
        return _unroutable(exchange, routing_key)
    if isinstance(result, BaseException):
        return publish_error(result, exchange, routing_key, None)
    return None


def publish_error(
    exc: BaseException, exchange: str, routing_key: str, timeout: float | None
) -> EmitError:
    """The error a failed confirmed publish raises, saying what happened and what to do."""
    if isinstance(exc, EmitError):
        return exc
    if isinstance(exc, aiormq.exceptions.PublishError):
        return _unroutable(exchange, routing_key)
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return PublishRefusedError(
            f"RabbitMQ refused the message for routing key {routing_key!r} on exchange "
            f"{exchange!r} (basic.nack: the queue is over its length limit or failed); "
            "retry later or check the queue's state"
        )
    if isinstance(exc, TimeoutError):
        return ProducerTimeout(
            f"RabbitMQ did not confirm the message for routing key {routing_key!r} within "
            f"{timeout}s; it may or may not have been stored"
        )
    if isinstance(
        exc,
        aiormq.exceptions.AMQPError
        | aiormq.exceptions.ChannelInvalidStateError
        | ConnectionError
        | asyncio.CancelledError,
    ):
        return EmitError(
            f"lost the RabbitMQ channel while publishing to {routing_key!r} "
            f"({type(exc).__name__}: {exc}); the message may or may not have been stored; "
            "retry once the connection is back"
        )
    return EmitError(
        f"publishing to {routing_key!r} on exchange {exchange!r} failed "
        f"({type(exc).__name__}: {exc}); the message may or may not have been stored"
    )


def _unroutable(exchange: str, routing_key: str) -> EmitError:
    return EmitError(
        f"no queue is bound for routing key {routing_key!r} on exchange {exchange!r}, so "
        "RabbitMQ returned the event instead of storing it; start a consumer for this topic "
        "first (its queue is declared and bound when it starts) or bind a queue to the "
        "exchange for this key"
    )
