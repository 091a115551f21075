"""RabbitMQ: deliveries pamqp cannot decode, read leniently, become messages. Pure."""

from __future__ import annotations

import asyncio
import base64
import struct

import pamqp.frame
import pytest
from aiormq.abc import DeliveredMessage
from hypothesis import given, settings
from hypothesis import strategies as st

from dispytch.listener.consumer import Message
from dispytch.rabbitmq import _compat
from dispytch.rabbitmq.dead_letters import dead_letter_queue, fallback_queue
from dispytch.rabbitmq.wire import lenient_message, to_message
from tests.amqp_frames import content_header, frame, short

FUZZ = settings(max_examples=200, deadline=None)


def deliver_frame(routing_key: bytes, *, exchange: bytes = b"x", tag: bytes = b"ctag") -> bytes:
    payload = struct.pack(">HH", 60, 60) + short(tag) + struct.pack(">QB", 7, 1)
    return frame(1, payload + short(exchange) + short(routing_key))


def header_frame(
    headers: list[tuple[bytes, bytes]],
    *,
    message_id: bytes | None = None,
    timestamp: int | None = None,
) -> bytes:
    return frame(2, content_header(2, headers=headers, message_id=message_id, timestamp=timestamp))


def decode(data: bytes) -> object:
    """What a protected connection's frame reader makes of ``data``."""
    try:
        return pamqp.frame.unmarshal(data)[2]
    except Exception:
        lenient = _compat.lenient_frame(data)
        assert lenient is not None, "a frame a protected connection would die on"
        assert lenient[0] == len(data)
        return lenient[2]


def to_any_message(delivery: object, header: object) -> tuple[Message, str | None]:
    delivered = DeliveredMessage(delivery=delivery, header=header, body=b"{}", channel=None)  # type: ignore[arg-type]
    undecodable = _compat.undecodable(delivery) + _compat.undecodable(header)
    if undecodable:
        message, problem = lenient_message(delivered, undecodable)
        return message, problem
    return to_message(delivered, {"ctag"}), None


def test_a_routing_key_that_is_not_utf8_is_kept_as_its_bytes() -> None:
    delivery = decode(deliver_frame(b"orders.\xff\xfe"))
    header = decode(header_frame([(b"x-dispytch-key", b"k1")]))
    assert _compat.undecodable(delivery) == ("routing-key",)
    message, problem = to_any_message(delivery, header)
    assert message.topic == "orders.\\xff\\xfe"  # printable, escaped
    assert base64.b64decode(message.headers["x-dispytch-original-topic-b64"]) == b"orders.\xff\xfe"
    assert message.headers["x-dispytch-undecodable"] == "topic"
    assert message.key == b"k1"
    assert problem is not None and "routing-key" in problem


def test_header_names_properties_and_timestamps_pamqp_cannot_decode() -> None:
    header = decode(
        header_frame(
            [(b"ok", b"v"), (b"\xffbad", b"\xfe")], message_id=b"m\xff", timestamp=2**64 - 1
        )
    )
    assert set(_compat.undecodable(header)) == {"header-name", "message-id", "timestamp"}
    message, _ = to_any_message(decode(deliver_frame(b"orders.created")), header)
    assert message.headers["ok"] == "v"
    pair = message.headers["x-dispytch-undecodable-header-1"]
    assert [base64.b64decode(part) for part in pair.split(":")] == [b"\xffbad", b"\xfe"]
    assert message.headers["x-dispytch-undecodable"] == "headers,properties"


def test_frames_pamqp_decodes_are_left_to_pamqp() -> None:
    assert _compat.lenient_frame(deliver_frame(b"orders.created")) is None
    assert _compat.lenient_frame(header_frame([(b"a", b"b")])) is None
    assert _compat.undecodable(pamqp.frame.unmarshal(deliver_frame(b"ok"))[2]) == ()


def test_a_delivery_count_counts_only_on_a_quorum_queue_redelivery() -> None:
    forged = decode(header_frame([]))
    forged.properties.headers = {"x-delivery-count": 1000}  # type: ignore[attr-defined]
    first = decode(deliver_frame(b"t"))
    first.redelivered = False  # type: ignore[attr-defined]
    assert to_any_message(first, forged)[0].delivery_attempt == 1
    again = decode(deliver_frame(b"t"))  # redelivered, consumer tag "ctag" is counted
    assert to_any_message(again, forged)[0].delivery_attempt == 1001
    classic = decode(deliver_frame(b"t", tag=b"other"))
    assert to_any_message(classic, forged)[0].delivery_attempt == 2


@pytest.mark.private_access
async def test_only_protected_connections_read_leniently() -> None:
    bad = deliver_frame(b"\xff")
    _compat.install()
    with pytest.raises(Exception, match="Could not unmarshal"):
        pamqp.frame.unmarshal(bad)  # this task is no protected connection's reader

    class Connection:
        _reader_task = asyncio.current_task()

    assert _compat.protect(Connection()) is True
    assert _compat.undecodable(pamqp.frame.unmarshal(bad)[2]) == ("routing-key",)
    assert _compat.protect(object()) is False  # not an aiormq connection: the fallback


def test_dead_letter_queue_names_fit_in_an_amqp_short_string() -> None:
    assert dead_letter_queue("billing") == "dispytch.dlq.billing"
    assert fallback_queue("billing") == "dispytch.dlq-fallback.billing"
    for group in ("g" * 255, "é" * 127, "x" * 250 + "é"):
        for name in (dead_letter_queue(group), fallback_queue(group)):
            assert len(name.encode()) <= 255
    assert dead_letter_queue("a" * 255) != dead_letter_queue("a" * 254 + "b")


names = st.binary(max_size=40)


@given(
    routing_key=names,
    exchange=names,
    headers=st.lists(st.tuples(names, st.binary(max_size=30)), max_size=4),
    message_id=st.one_of(st.none(), names),
    timestamp=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
@FUZZ
def test_any_delivery_becomes_a_message(
    routing_key: bytes,
    exchange: bytes,
    headers: list[tuple[bytes, bytes]],
    message_id: bytes | None,
    timestamp: int | None,
) -> None:
    delivery = decode(deliver_frame(routing_key, exchange=exchange))
    header = decode(header_frame(headers, message_id=message_id, timestamp=timestamp))
    message, problem = to_any_message(delivery, header)
    assert isinstance(message, Message)
    message.topic.encode()  # always text that can be written anywhere
    for name, value in message.headers.items():
        name.encode()
        value.encode()
    try:
        routing_key.decode()
    except UnicodeDecodeError:
        assert problem is not None
        assert base64.b64decode(message.headers["x-dispytch-original-topic-b64"]) == routing_key


@given(st.binary(max_size=300))
@FUZZ
def test_the_lenient_reader_never_raises(data: bytes) -> None:
    _compat.lenient_frame(data)
    _compat.lenient_frame(b"\x01\x00\x01" + struct.pack(">I", len(data)) + data + b"\xce")
    _compat.lenient_frame(b"\x02\x00\x01" + struct.pack(">I", len(data)) + data + b"\xce")
