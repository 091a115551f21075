"""The default JSON codec's fast paths give the bytes and values of the plain ``json`` ones.

Encoding: pydantic-core writes the envelope (``serialization/json/envelope.py``); every byte must
be what ``json.dumps(event.envelope())`` (Dispytch 0.10) writes. Decoding: pydantic-core's
parser reads the payload; whatever it accepts must decode to what ``json.loads`` gives, and
what it refuses gets ``json.loads``' verdict.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import math
import random
import uuid
from typing import Any, Literal

import pytest
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    computed_field,
    field_serializer,
    field_validator,
)
from pydantic_core import from_json

from dispytch import EventBase
from dispytch.emitter.emitter import EventEmitter
from dispytch.emitter.producer import Producer
from dispytch.serialization.json import JSONDeserializer, JSONSerializer, compiled
from dispytch.serialization.json import envelope as envelope_module
from dispytch.serialization.json.envelope import envelope_json, float_free
from dispytch.serialization.serializer import Serializer


class _NullProducer(Producer):
    async def send(self, *args: Any, **kwargs: Any) -> None: ...


def _010(event: EventBase, timestamp: int = 42) -> bytes:
    """What Dispytch 0.10 wrote for ``event``."""
    return json.dumps(event.envelope(timestamp)).encode()


# -- encoding ------------------------------------------------------------------------------------


class Color(enum.StrEnum):
    RED = "r,\n"
    GREEN = "g"


class Tag(BaseModel):
    label: str
    names: list[str] = []


class Plain(EventBase):
    """Nothing in it can be a float: pydantic-core's bytes are used as they come."""

    __topic__ = "plain"
    __event_type__ = "plain\u00e9"

    text: str
    number: int
    maybe: str | None = None
    nested: list[dict[str, Tag]] = []
    at: datetime.datetime | None = None
    ident: uuid.UUID | None = None
    amount: decimal.Decimal | None = None
    color: Color = Color.GREEN
    choice: Literal["x", 1, None] = None
    pair: tuple[int, str] | None = None
    raw: bytes = b""
    aliased: str = Field(default="q", alias="aliasedName")


class Reading(BaseModel):
    label: str
    value: float = 0.0


class Floats(EventBase):
    """Floats anywhere: the bytes are looked at before they are used."""

    __topic__ = "floats"
    __event_type__ = "floats"

    value: float
    readings: list[Reading] = []
    anything: Any = None
    table: dict[str, float] = {}


def _text(rng: random.Random) -> str:
    picks = [
        rng.choice(
            [
                rng.randint(0, 0x7F),
                rng.randint(0x80, 0xD7FF),
                rng.randint(0xE000, 0x10FFFF),
                0x0A,
                ord(","),
                ord('"'),
                ord("\\"),
            ]
        )
        for _ in range(rng.randint(0, 8))
    ]
    if rng.random() < 0.02:
        picks.append(0x7F)  # DEL: json.dumps escapes it, pydantic-core does not
    return "".join(map(chr, picks))


def _float(rng: random.Random) -> float:
    return rng.choice(
        [
            rng.random() * 10 ** rng.randint(-12, 25),
            -rng.random(),
            0.0,
            -0.0,
            1e-5,
            1e-7,
            1e16,
            3.0,
            math.inf,
            -math.inf,
            math.nan,
        ]
    )


def _plain(rng: random.Random) -> Plain:
    zone = rng.choice(
        [None, datetime.UTC, datetime.timezone(datetime.timedelta(hours=5, minutes=30))]
    )
    return Plain(
        id=_text(rng),
        text=_text(rng),
        number=rng.randint(-(10**30), 10**30),
        maybe=rng.choice([None, _text(rng)]),
        nested=[
            {_text(rng): Tag(label=_text(rng), names=[_text(rng)] * rng.randint(0, 2))}
            for _ in range(rng.randint(0, 2))
        ],
        at=datetime.datetime(2024, 1, 2, 3, 4, 5, rng.randint(0, 999_999), tzinfo=zone),
        ident=uuid.UUID(int=rng.getrandbits(128)),
        amount=decimal.Decimal(rng.randint(-99, 99)) / 7,
        color=rng.choice(list(Color)),
        choice=rng.choice(["x", 1, None]),
        pair=(rng.randint(0, 9), _text(rng)),
        raw=bytes(rng.randrange(0x20, 0x7F) for _ in range(rng.randint(0, 5))),
        aliasedName=_text(rng),
    )


def _floats(rng: random.Random) -> Floats:
    return Floats(
        value=_float(rng),
        readings=[Reading(label=_text(rng), value=_float(rng)) for _ in range(rng.randint(0, 2))],
        anything=rng.choice([None, _float(rng), _text(rng), [_float(rng)], {1: 2}, (1, "a")]),
        table={_text(rng): _float(rng) for _ in range(rng.randint(0, 2))},
    )


def test_the_bytes_are_json_dumps_bytes_for_thousands_of_events() -> None:
    rng = random.Random(20250611)
    serializer = JSONSerializer()
    direct = 0
    for _ in range(3000):
        for event in (_plain(rng), _floats(rng)):
            assert serializer.serialize_event(event, 42) == _010(event)
            direct += envelope_json(event, 42) is not None
    assert direct > 2000  # most events took pydantic-core's path, not the fallback


class Flat(EventBase):
    """No list of objects in it: a batch of these is written in one call."""

    __topic__ = "flat"
    __event_type__ = "flat"

    text: str
    tag: Tag
    values: list[float] = []


def test_a_batch_has_the_bytes_json_dumps_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(99)
    calls: list[int] = []
    real_run = envelope_module._run

    def counting(plan: Any, events: Any, timestamp_ms: int) -> Any:
        written = real_run(plan, events, timestamp_ms)
        calls.append(len(events) if written is not None else 0)
        return written

    monkeypatch.setattr(envelope_module, "_run", counting)
    serializer = JSONSerializer()
    for _ in range(300):
        events: list[EventBase] = []
        kind = rng.random()  # mostly one class per batch, as emit_many is mostly used
        for _ in range(rng.randint(0, 12)):
            roll = kind if rng.random() < 0.8 else rng.random()
            if roll < 0.4:
                events.append(
                    Flat(
                        id=_text(rng),
                        text=_text(rng),
                        tag=Tag(label=_text(rng), names=[_text(rng)]),
                        values=[rng.random() for _ in range(rng.randint(0, 2))],
                    )
                )
            else:
                events.append(_plain(rng) if roll < 0.7 else _floats(rng))
        assert serializer.serialize_events(events, 7) == [_010(e, 7) for e in events]
    assert sum(calls) > 300  # runs written in one call, not only event by event


def test_a_batch_of_events_whose_only_field_is_excluded_has_empty_bodies() -> None:
    class Hidden(EventBase):
        __topic__ = "t"
        __event_type__ = "hidden"
        secret: str = Field(exclude=True)

    events = [Hidden(id=f"h{n}", secret="s") for n in range(3)]
    assert JSONSerializer().serialize_events(events, 1) == [
        b'{"id": "h%d", "type": "hidden", "body": {}, "timestamp": 1}' % n for n in range(3)
    ]


class Point(BaseModel):
    x: int
    label: str


class Simple(EventBase):
    """Plain values only: written by a compiled writer."""

    __topic__ = "simple"
    __event_type__ = "simple\u00e9 %s {}"

    text: str = Field(alias="Text%d")
    count: int
    ratio: float
    flag: bool
    note: str | None = None
    level: int | None = None
    mode: Literal["a", "b"] = "a"
    point: Point
    hidden: str = Field(default="h", exclude=True)

    @field_validator("text")
    @classmethod
    def _same(cls, value: str) -> str:
        return value


class Child(Point):
    extra: int = 0


def _simple(rng: random.Random) -> Simple:
    return Simple(
        id=_text(rng),
        **{"Text%d": _text(rng)},
        count=rng.choice([0, -1, 10**30, rng.randint(-999, 999)]),
        ratio=_float(rng),
        flag=rng.random() < 0.5,
        note=rng.choice([None, _text(rng)]),
        level=rng.choice([None, rng.randint(-5, 5)]),
        mode=rng.choice(["a", "b"]),
        point=Point(x=rng.randint(0, 9), label=_text(rng)),
    )


def test_a_class_of_plain_values_gets_a_compiled_writer_with_the_same_bytes() -> None:
    assert compiled.writer(Simple, Simple.__event_type__) is not None
    for cls in (Plain, Floats, Flat):  # lists, dicts, datetimes...: pydantic-core writes those
        assert compiled.writer(cls, "x") is None
    rng = random.Random(5)
    serializer = JSONSerializer()
    events = [_simple(rng) for _ in range(2000)]
    written = [compiled.writer(Simple, Simple.__event_type__)(e, 9) for e in events]  # type: ignore[misc]
    assert all(w is not None for w in written)
    assert written == [_010(e, 9) for e in events]
    assert serializer.serialize_events(events, 9) == written
    assert [serializer.serialize_event(e, 9) for e in events[:50]] == written[:50]


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_a_value_of_another_type_than_declared_takes_the_general_path() -> None:
    write = compiled.writer(Simple, Simple.__event_type__)
    assert write is not None
    base = _simple(random.Random(1))
    odd = [
        base.model_copy(update={"count": True}),  # a bool where an int is declared
        base.model_copy(update={"ratio": 3}),  # an int where a float is declared
        base.model_copy(update={"flag": 1}),
        base.model_copy(update={"text": Color.RED}),  # a str subclass
        base.model_copy(update={"point": Child(x=1, label="c", extra=5)}),  # a subclass
        base.model_copy(update={"id": 7}),
    ]
    for event in odd:
        assert write(event, 1) is None
        assert JSONSerializer().serialize_event(event, 1) == _010(event, 1)


def test_the_schema_check_tells_float_free_classes_apart() -> None:
    class Computed(EventBase):
        __topic__ = "t"
        __event_type__ = "computed"
        x: int

        @computed_field  # type: ignore[prop-decorator]
        @property
        def half(self) -> float:
            return self.x / 2

    class Custom(EventBase):
        __topic__ = "t"
        __event_type__ = "custom"
        x: int

        @field_serializer("x")
        def _x(self, value: int) -> Any:
            return value / 7

    class Seconds(EventBase):
        model_config = ConfigDict(ser_json_temporal="seconds")
        __topic__ = "t"
        __event_type__ = "seconds"
        at: datetime.datetime

    class Durations(EventBase):
        __topic__ = "t"
        __event_type__ = "durations"
        took: datetime.timedelta

    class FieldNamedType(EventBase):
        __topic__ = "t"
        __event_type__ = "named"
        type: str
        schema_: str = Field(alias="schema")

    verdicts = {
        cls.__name__: float_free(cls.__pydantic_core_schema__)
        for cls in (Plain, Floats, Computed, Custom, Seconds, Durations, FieldNamedType)
    }
    assert verdicts == {
        "Plain": True,
        "Floats": False,
        "Computed": False,
        "Custom": False,
        "Seconds": False,
        "Durations": False,
        "FieldNamedType": True,
    }
    for event in (
        Computed(x=1),
        Custom(x=3),
        Seconds(at=datetime.datetime(2024, 1, 1, microsecond=5)),
        Durations(took=datetime.timedelta(microseconds=7)),
        FieldNamedType(type="a", schema="b"),
    ):
        assert JSONSerializer().serialize_event(event, 1) == _010(event, 1)


@pytest.mark.parametrize(
    ("value", "spelled"),
    [(1e-05, b"1e-05"), (1e-07, b"1e-07"), (math.inf, b"Infinity"), (math.nan, b"NaN")],
)
def test_floats_pydantic_core_spells_otherwise_keep_0_10s_spelling(
    value: float, spelled: bytes
) -> None:
    event = Floats(value=value)
    assert envelope_json(event, 1) is None  # the dict path
    assert JSONSerializer().serialize_event(event, 1) == (
        b'{"id": "%s", "type": "floats", "body": {"value": %s, "readings": [], '
        b'"anything": null, "table": {}}, "timestamp": 1}' % (event.id.encode(), spelled)
    )


@pytest.mark.parametrize("text", ["a\x7fb", "lone \ud800 surrogate"], ids=["DEL", "surrogate"])
def test_strings_pydantic_core_writes_otherwise_keep_0_10s_escapes(text: str) -> None:
    event = Plain(id="x", text=text, number=1)
    assert envelope_json(event, 1) is None
    assert JSONSerializer().serialize_event(event, 1) == _010(event, 1)
    assert b"\\u007f" in _010(Plain(id="x", text="\x7f", number=1))


def test_a_subclass_gets_its_own_type_and_fields() -> None:
    class Parent(EventBase):
        __topic__ = "t"
        __event_type__ = "parent"
        a: int

    class Child(Parent):
        __event_type__ = "child"
        b: str

    serializer = JSONSerializer()
    assert serializer.serialize_event(Parent(id="p", a=1), 1) == _010(Parent(id="p", a=1), 1)
    child = Child(id="c", a=1, b="x")
    assert serializer.serialize_event(child, 1) == (
        b'{"id": "c", "type": "child", "body": {"a": 1, "b": "x"}, "timestamp": 1}'
    )


def test_an_event_class_that_customises_its_envelope_is_written_its_way() -> None:
    class Custom(EventBase):
        __topic__ = "t"
        __event_type__ = "custom"
        a: int

        def envelope(self, timestamp_ms: int | None = None) -> dict[str, Any]:
            out = super().envelope(timestamp_ms)
            out["body"]["extra"] = True
            return out

    assert JSONSerializer().serialize_event(Custom(id="x", a=1), 1) == (
        b'{"id": "x", "type": "custom", "body": {"a": 1, "extra": true}, "timestamp": 1}'
    )


def test_a_serializer_subclass_that_overrides_serialize_is_called_for_every_event() -> None:
    class Sorted(JSONSerializer):
        def serialize(self, payload: dict[str, Any]) -> bytes:
            return json.dumps(payload, sort_keys=True).encode()

    event = Plain(id="x", text="a", number=1)
    _, payload = EventEmitter(_NullProducer(), Sorted()).encode(event, 1)
    assert payload.startswith(b'{"body": {"aliasedName": "q", "amount": null')


def test_a_non_ascii_compatible_encoding_takes_the_dict_path() -> None:
    event = Plain(id="x", text="a", number=1)
    payload = JSONSerializer("utf-16").serialize_event(event, 1)
    assert payload == json.dumps(event.envelope(1)).encode("utf-16")


def test_a_0_10_serializer_without_serialize_event_still_works() -> None:
    class Old:  # duck-typed, as 0.10 allowed
        def serialize(self, payload: dict[str, Any]) -> bytes:
            return repr(sorted(payload)).encode()

    emitter = EventEmitter(_NullProducer(), Old())  # type: ignore[arg-type]
    event = Plain(id="x", text="a", number=1)
    assert emitter.encode(event, 1) == ("plain", b"['body', 'id', 'timestamp', 'type']")


def test_the_default_serialize_event_is_serialize_of_the_envelope() -> None:
    class Keys(Serializer):
        def serialize(self, payload: dict[str, Any]) -> bytes:
            return ",".join(payload).encode()

    assert Keys().serialize_event(Plain(id="x", text="a", number=1), 1) == b"id,type,body,timestamp"


# -- decoding ------------------------------------------------------------------------------------

_NUMBERS = [
    "0", "-0", "1", "-1", "01", "1.", ".5", "1.5", "1e5", "1E+5", "1e-5", "-1.25e-310", "1e400",
    "9" * 19, "9" * 25, "1" * 4300, "1" * 4301, "NaN", "Infinity", "-Infinity", "+1", "0x10",
    "4.9406564584124654e-324", "1.7976931348623159e308", "0e0", "-0.0", "1e", "true", "false",
    "null", "tru",
]  # fmt: skip
_STRINGS = [
    '"a"', '""', '"\\u00e9"', '"\\ud83d\\ude00"', '"\\ud800"', '"\\udc00x"', '"\\u0000"',
    '"\\x"', '"\\/"', '"é"', '"\U0001f600"', '"\t"', '"a\\nb"', '"\\u12"', '"\x7f"', '"\ufeff"',
]  # fmt: skip
_SPACE = ["", " ", "\n", "\t", "\r", "\x0b", "\xa0"]


def _document(rng: random.Random, depth: int = 0) -> str:
    roll = rng.random()
    if depth > 4 or roll < 0.35:
        return rng.choice(_NUMBERS)
    if roll < 0.6:
        return rng.choice(_STRINGS)
    if roll < 0.8:
        items = (rng.choice(_SPACE) + _document(rng, depth + 1) for _ in range(rng.randint(0, 3)))
        return "[" + ",".join(items) + "]"
    members = (
        rng.choice(_SPACE) + rng.choice(_STRINGS) + ":" + _document(rng, depth + 1)
        for _ in range(rng.randint(0, 3))
    )
    return "{" + ",".join(members) + "}"


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def test_what_pydantic_core_parses_json_loads_parses_the_same() -> None:
    rng = random.Random(7)
    agreed = 0
    for _ in range(20_000):
        data = (rng.choice(_SPACE) + _document(rng) + rng.choice(_SPACE)).encode(
            "utf-8", "surrogatepass"
        )
        if rng.random() < 0.3:  # and a few broken ones
            broken = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                broken[rng.randrange(len(broken))] = rng.randrange(256)
            data = bytes(broken)
        try:
            fast = from_json(data, cache_strings="keys")
        except ValueError:
            continue
        assert _same(fast, json.loads(data.decode("utf-8"))), data
        agreed += 1
    assert agreed > 3000


def _nested(depth: int) -> bytes:
    return b'{"id": "x", "type": "t", "body": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


def test_json_nested_deeper_than_pydantic_cores_limit_decodes_as_it_did() -> None:
    body = JSONDeserializer().deserialize(_nested(500)).body
    depth = 0
    value = body["a"]
    while value:
        value, depth = value[0], depth + 1
    assert depth == 499


def test_an_escaped_lone_surrogate_decodes_as_it_did() -> None:
    payload = b'{"id": "x", "type": "t", "body": {"a": "\\ud800"}}'
    assert JSONDeserializer().deserialize(payload).body == {"a": "\ud800"}


def test_a_non_utf8_encoding_is_decoded_with_it() -> None:
    payload = '{"id": "x", "type": "t", "body": {"a": "é"}}'.encode("latin-1")
    assert JSONDeserializer("latin-1").deserialize(payload).body == {"a": "é"}
