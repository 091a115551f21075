"""The wire format (byte-compatible with Dispytch 0.10) and hostile input."""

import contextlib
import json
import random
from typing import Any

import msgpack
import pytest
from pydantic import BaseModel

from dispytch import DecodeError, Event, EventBase, EventListener, HandlerGroup
from dispytch.emitter.emitter import EventEmitter
from dispytch.emitter.producer import Producer
from dispytch.events import Envelope
from dispytch.memory import MemoryBroker
from dispytch.serialization.deserializer import Deserializer
from dispytch.serialization.json import JSONDeserializer, JSONSerializer
from dispytch.serialization.msgpack import MessagePackDeserializer, MessagePackSerializer
from tests.helpers import wait_until
from tests.unit.support import RecordingConsumer, envelope, running


class UserRegistered(EventBase):
    __topic__ = "user_events"
    __event_type__ = "user_registered"

    name: str
    age: int


class UserBody(BaseModel):
    name: str
    age: int


class _NullProducer(Producer):
    async def send(self, *args: Any, **kwargs: Any) -> None: ...


EVENT = UserRegistered(id="a1", name="Ann", age=3)

# What Dispytch 0.10 wrote: json.dumps defaults (", " and ": " separators, ASCII escapes), keys
# in the order id, type, body, timestamp.
JSON_010 = (
    b'{"id": "a1", "type": "user_registered", "body": {"name": "Ann", "age": 3}, "timestamp": 123}'
)

# The same envelope packed by msgpack.packb(..., use_bin_type=True): fixmap(4), then
# "id" "a1", "type" "user_registered", "body" fixmap(2){"name": "Ann", "age": 3},
# "timestamp" 123 (positive fixint 0x7b, which shows as "{").
MSGPACK_010 = (
    b"\x84\xa2id\xa2a1\xa4type\xafuser_registered\xa4body\x82\xa4name\xa3Ann\xa3age\x03"
    b"\xa9timestamp{"
)

# -- exact bytes ----------------------------------------------------------------------------------


def test_json_bytes_are_the_010_format() -> None:
    assert JSONSerializer().serialize(EVENT.envelope(123)) == JSON_010


def test_json_bytes_through_the_emitter() -> None:
    topic, payload = EventEmitter(_NullProducer()).encode(EVENT, 123)
    assert (topic, payload) == ("user_events", JSON_010)


def test_json_non_ascii_is_escaped_like_010() -> None:
    event = UserRegistered(id="a1", name="José", age=3)
    assert JSONSerializer().serialize(event.envelope(5)) == (
        b'{"id": "a1", "type": "user_registered", "body": {"name": "Jos\\u00e9", "age": 3}, '
        b'"timestamp": 5}'
    )


def test_msgpack_bytes_are_the_010_format() -> None:
    assert MessagePackSerializer().serialize(EVENT.envelope(123)) == MSGPACK_010
    topic, payload = EventEmitter(_NullProducer(), MessagePackSerializer()).encode(EVENT, 123)
    assert (topic, payload) == ("user_events", MSGPACK_010)


def test_envelope_body_uses_aliases_and_json_types() -> None:
    from datetime import UTC, datetime

    from pydantic import Field

    class Aliased(EventBase):
        __topic__ = "t"
        __event_type__ = "aliased"
        user_name: str = Field(alias="userName")
        at: datetime

    event = Aliased(id="x", userName="a", at=datetime(2024, 1, 2, tzinfo=UTC))
    assert JSONSerializer().serialize(event.envelope(1)) == (
        b'{"id": "x", "type": "aliased", "body": {"userName": "a", '
        b'"at": "2024-01-02T00:00:00Z"}, "timestamp": 1}'
    )


def test_envelope_timestamp_defaults_to_now_in_ms() -> None:
    import time

    before = int(time.time() * 1000)
    timestamp = EVENT.envelope()["timestamp"]
    assert before <= timestamp <= int(time.time() * 1000)


# -- decoding 0.10 bytes --------------------------------------------------------------------------

EXPECTED = Envelope("a1", "user_registered", {"name": "Ann", "age": 3}, 123)


def test_decode_010_json() -> None:
    assert JSONDeserializer().deserialize(JSON_010) == EXPECTED


def test_decode_010_json_compact_separators() -> None:
    compact = json.dumps(json.loads(JSON_010), separators=(",", ":")).encode()
    assert JSONDeserializer().deserialize(compact) == EXPECTED


def test_decode_010_msgpack() -> None:
    assert MessagePackDeserializer().deserialize(MSGPACK_010) == EXPECTED


def test_missing_timestamp_decodes_as_zero() -> None:
    data = b'{"id": "a1", "type": "t", "body": {}}'
    assert JSONDeserializer().deserialize(data).timestamp == 0


def test_integral_float_timestamp_is_accepted() -> None:
    data = b'{"id": "a1", "type": "t", "body": {}, "timestamp": 123.0}'
    assert JSONDeserializer().deserialize(data).timestamp == 123


@pytest.mark.parametrize(
    ("payload", "deserializer"),
    [(JSON_010, JSONDeserializer()), (MSGPACK_010, MessagePackDeserializer())],
    ids=["json", "msgpack"],
)
async def test_010_bytes_reach_a_handler_as_the_right_event(
    payload: bytes, deserializer: Deserializer
) -> None:
    got: list[Event[UserBody]] = []
    group = HandlerGroup()

    @group.handler(topic="user_events", event="user_registered")
    async def handle(event: Event[UserBody]) -> None:
        got.append(event)

    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer, deserializer)
    listener.add_handler_group(group)
    async with running(listener):
        broker.publish("user_events", payload)
        await wait_until(lambda: len(consumer.acked) == 1, timeout=5, what="ack")
    (event,) = got
    assert (event.id, event.type, event.topic, event.timestamp) == (
        "a1",
        "user_registered",
        "user_events",
        123,
    )
    assert event.body == UserBody(name="Ann", age=3)


# -- hostile input --------------------------------------------------------------------------------

DEEP = 100_000

HOSTILE_JSON = {
    "empty": b"",
    "garbage": b"\x00\x01not json at all",
    "invalid utf-8": b'{"id": "\xff\xfe", "type": "t", "body": {}}',
    "deep list": b"[" * DEEP + b"]" * DEEP,
    "deep object": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "deep body": b'{"id": "x", "type": "t", "body": ' + b'{"a":' * DEEP + b"1" + b"}" * (DEEP + 1),
    "top-level list": b'[{"id": "x", "type": "t", "body": {}}]',
    "top-level string": b'"hello"',
    "null": b"null",
    "body is a list": b'{"id": "x", "type": "t", "body": [1, 2]}',
    "body is a string": b'{"id": "x", "type": "t", "body": "{}"}',
    "body is null": b'{"id": "x", "type": "t", "body": null}',
    "no id": b'{"type": "t", "body": {}}',
    "no type": b'{"id": "x", "body": {}}',
    "no body": b'{"id": "x", "type": "t"}',
    "id is a number": b'{"id": 1, "type": "t", "body": {}}',
    "type is null": b'{"id": "x", "type": null, "body": {}}',
    "timestamp is a string": b'{"id": "x", "type": "t", "body": {}, "timestamp": "1"}',
    "timestamp is fractional": b'{"id": "x", "type": "t", "body": {}, "timestamp": 1.5}',
    "timestamp is a bool": b'{"id": "x", "type": "t", "body": {}, "timestamp": true}',
    "timestamp is NaN": b'{"id": "x", "type": "t", "body": {}, "timestamp": NaN}',
    "timestamp is Infinity": b'{"id": "x", "type": "t", "body": {}, "timestamp": Infinity}',
    "huge integer": b'{"id": "x", "type": "t", "body": {}, "timestamp": ' + b"9" * 5000 + b"}",
    "truncated": JSON_010[:-5],
    "trailing data": JSON_010 + b"{}",
}


@pytest.mark.parametrize("payload", list(HOSTILE_JSON.values()), ids=list(HOSTILE_JSON))
def test_hostile_json_raises_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        JSONDeserializer().deserialize(payload)


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


HOSTILE_MSGPACK = {
    "empty": b"",
    "garbage": b"\xc1\xc1\xc1",
    "deep arrays": b"\x91" * DEEP + b"\xc0",
    "deep maps": b"\x81\xa1a" * DEEP + b"\xc0",
    "invalid utf-8 string": b"\x81\xa2id\xa2\xff\xfe",
    "huge declared array": b"\xdd\xff\xff\xff\xff",
    "top-level int": _pack(5),
    "body is a list": _pack({"id": "x", "type": "t", "body": [1]}),
    "id is bytes": _pack({"id": b"x", "type": "t", "body": {}}),
    "no body": _pack({"id": "x", "type": "t"}),
    "non-string map key": _pack({1: "x"}),
    "timestamp is a string": _pack({"id": "x", "type": "t", "body": {}, "timestamp": "1"}),
    "truncated": MSGPACK_010[:-3],
    "trailing data": MSGPACK_010 + b"\xc0",
}


@pytest.mark.parametrize("payload", list(HOSTILE_MSGPACK.values()), ids=list(HOSTILE_MSGPACK))
def test_hostile_msgpack_raises_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        MessagePackDeserializer().deserialize(payload)


@pytest.mark.parametrize(
    "deserializer", [JSONDeserializer(), MessagePackDeserializer()], ids=["json", "msgpack"]
)
def test_random_bytes_only_ever_raise_decode_error(deserializer: Deserializer) -> None:
    rng = random.Random(20240611)
    for _ in range(2000):
        payload = rng.randbytes(rng.randrange(0, 64))
        with contextlib.suppress(DecodeError):  # anything else fails the test
            deserializer.deserialize(payload)


@pytest.mark.parametrize(
    ("deserializer", "payload"),
    [
        (JSONDeserializer(max_payload_bytes=len(JSON_010) - 1), JSON_010),
        (MessagePackDeserializer(max_payload_bytes=len(MSGPACK_010) - 1), MSGPACK_010),
    ],
    ids=["json", "msgpack"],
)
def test_payload_over_max_payload_bytes_is_refused(
    deserializer: Deserializer, payload: bytes
) -> None:
    with pytest.raises(DecodeError, match="exceeds max_payload_bytes"):
        deserializer.deserialize(payload)


def test_payload_at_max_payload_bytes_is_accepted() -> None:
    assert JSONDeserializer(max_payload_bytes=len(JSON_010)).deserialize(JSON_010) == EXPECTED


async def test_undecodable_messages_are_dead_lettered_and_the_loop_keeps_going() -> None:
    got: list[int] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed", retries=3, retry_interval=0)
    async def handle(event: Event[dict[str, Any]]) -> None:
        got.append(event.body["n"])

    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer, JSONDeserializer(max_payload_bytes=10_000))
    listener.add_handler_group(group)
    bad = [
        HOSTILE_JSON["deep list"][:9_000],
        HOSTILE_JSON["invalid utf-8"],
        HOSTILE_JSON["body is a list"],
        b"x" * 10_001,
        b"\x00garbage",
    ]
    async with running(listener):
        for n, payload in enumerate(bad):
            broker.publish("orders", payload)
            broker.publish("orders", envelope("placed", {"n": n}, id_=f"ok-{n}"))
        await wait_until(lambda: consumer.settled == 2 * len(bad), timeout=5, what="all settled")
    assert got == list(range(len(bad)))
    assert [f.reason for _, f in consumer.dead] == ["decode"] * len(bad)
    assert all(f.attempts == 1 and f.error_type == "DecodeError" for _, f in consumer.dead)
    dead = broker.dead_letters("orders")
    assert [d.payload for d in dead] == bad  # the original bytes, untouched
    assert {d.reason for d in dead} == {"decode"}
    assert len(consumer.acked) == 2 * len(bad)
    assert broker.pending() == 0  # nothing left unacked or waiting for redelivery
