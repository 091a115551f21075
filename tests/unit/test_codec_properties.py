"""Property tests: every JSON writer gives the bytes of Dispytch 0.10, the parser its values.

The reference is what 0.10 did: ``json.dumps(event.envelope(ts)).encode()`` to write (the body
from ``model_dump(mode="json", by_alias=True, exclude={"id"})``) and
``json.loads(payload.decode())`` to read. Each fast path (the compiled writer, pydantic-core's
``to_json``, ``emit_many``'s one-call batch) must give the same bytes, or step aside (``None``)
so the reference path writes them; where the reference raises, the fast path raises the same.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import math
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    computed_field,
    field_serializer,
)

from dispytch import DecodeError, EventBase
from dispytch.events import Envelope
from dispytch.serialization.deserializer import envelope_from_mapping
from dispytch.serialization.json import JSONDeserializer, JSONSerializer, compiled
from dispytch.serialization.json.envelope import envelope_json, envelopes_json
from tests.unit.test_json_codec import _same

SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# -- values --------------------------------------------------------------------------------------

#: Every code point, lone surrogates included, with the ones JSON writers treat specially.
CHARS = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()),
    st.sampled_from(["\x7f", "\u2028", "\u2029", "\ud800", "\udfff", "\U0001f600", '"', "\\"]),
    st.sampled_from(["\x00", "\x1f", "\n", "/", "%", "{", "}", ",", ":", "\ufeff"]),
)
TEXT = st.text(CHARS, max_size=12)
INTS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**4299, -(10**4300 - 1)]),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, 0.0, 1e300, 5e-324, 1e16, 1e22, 1e-5, 1e-7, 0.1, math.inf, math.nan]),
)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)
#: What an ``Any`` field may hold beyond JSON values: mixed dict keys, tuples, sets, bytes.
ANYTHING = st.one_of(
    JSONISH,
    st.dictionaries(st.one_of(TEXT, INTS, st.booleans(), st.none()), SCALARS, max_size=3),
    st.tuples(SCALARS, SCALARS),
    st.frozensets(st.integers(), max_size=3),
    st.binary(max_size=4),
    INTS.map(lambda n: {n: "int", str(n): "str"}),  # one JSON key twice
)


class Color(enum.StrEnum):
    RED = "r"
    ODD = 'o"\u00e9\n'


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2**70


class Point(BaseModel):
    x: int
    label: str


class Point3(Point):
    z: float = 0.5


class Scalars(EventBase):
    """Plain values only: the compiled writer's kind of class."""

    __topic__ = "scalars"
    __event_type__ = "scalars \u00e9 %s"

    text: str
    number: int
    flag: bool
    ratio: float
    note: str | None = None
    level: int | None = None
    mode: Literal["a", "b"] = "a"
    point: Point = Point(x=0, label="")
    renamed: str = Field(default="", serialization_alias="Renamed %d \u00e9")
    hidden: str = Field(default="h", exclude=True)


class Mixed(EventBase):
    """Containers, temporal and other types written as strings: pydantic-core's path."""

    __topic__ = "mixed"
    __event_type__ = "mixed"

    texts: list[str] = []
    counts: dict[str, int] = {}
    at: datetime.datetime | None = None
    day: datetime.date | None = None
    ident: uuid.UUID | None = None
    amount: decimal.Decimal | None = None
    color: Color = Color.RED
    level: Level = Level.LOW
    raw: bytes = b""
    points: list[Point] = []
    maybe: Point | None = None
    pair: tuple[int, str] | None = None
    by_int: dict[int, str] = {}


class Floaty(EventBase):
    """Floats: pydantic-core's bytes checked before use."""

    __topic__ = "floaty"
    __event_type__ = "floaty"

    values: list[float] = []
    table: dict[str, float] = {}
    point: Point3 | None = None


class Anything(EventBase):
    """Any: the dict path, for its dicts may hold one JSON key twice."""

    __topic__ = "anything"
    __event_type__ = "anything"

    anything: Any = None
    values: list[float] = []


class Shaped(EventBase):
    """Aliases, computed fields, custom serializers, an alias generator."""

    model_config = ConfigDict(
        alias_generator=lambda name: name.upper(), populate_by_name=True, ser_json_bytes="base64"
    )
    __topic__ = "shaped"
    __event_type__ = "shaped"

    text: str = ""
    when: datetime.timedelta = datetime.timedelta()
    blob: bytes = b""
    secret: str = Field(default="s", exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def length(self) -> int:
        return len(self.text)

    @field_serializer("text")
    def _text(self, value: str) -> str:
        return value[::-1]


class Colliding(EventBase):
    """Keys written twice by pydantic-core, once in 0.10's dict."""

    model_config = ConfigDict(extra="allow")
    __topic__ = "colliding"
    __event_type__ = "colliding"

    first: int = Field(default=0, serialization_alias="second")
    second: int = 0
    points: list[Point] = []
    renamed: int = Field(default=0, serialization_alias="other")

    @computed_field(alias="first")  # type: ignore[prop-decorator]
    @property
    def doubled(self) -> int:
        return self.second * 2


class InfAsStrings(EventBase):
    model_config = ConfigDict(ser_json_inf_nan="strings")
    __topic__ = "inf"
    __event_type__ = "inf"

    values: list[float] = []


def reference(event: EventBase, timestamp: int) -> bytes | type[BaseException]:
    """What Dispytch 0.10 wrote, or the exception it raised."""
    try:
        return json.dumps(event.envelope(timestamp)).encode()
    except Exception as exc:
        return type(exc)


def outcome(write: Callable[[], Any]) -> Any:
    try:
        return write()
    except Exception as exc:
        return type(exc)


SCALAR_EVENTS = st.builds(
    Scalars,
    id=TEXT,
    text=TEXT,
    number=INTS,
    flag=st.booleans(),
    ratio=FLOATS,
    note=st.none() | TEXT,
    level=st.none() | INTS,
    mode=st.sampled_from(["a", "b"]),
    point=st.builds(Point, x=INTS, label=TEXT) | st.builds(Point3, x=INTS, label=TEXT, z=FLOATS),
    renamed=TEXT,
)
MIXED_EVENTS = st.builds(
    Mixed,
    id=TEXT,
    texts=st.lists(TEXT, max_size=3),
    counts=st.dictionaries(TEXT, INTS, max_size=3),
    at=st.none() | st.datetimes(timezones=st.none() | st.timezones()),
    day=st.none() | st.dates(),
    ident=st.none() | st.uuids(),
    amount=st.none() | st.decimals(allow_nan=False, allow_infinity=False),
    color=st.sampled_from(Color),
    level=st.sampled_from(Level),
    raw=st.binary(max_size=6).filter(lambda b: b.isascii()),
    points=st.lists(st.builds(Point, x=INTS, label=TEXT), max_size=2),
    maybe=st.none() | st.builds(Point3, x=INTS, label=TEXT, z=FLOATS),
    pair=st.none() | st.tuples(INTS, TEXT),
    by_int=st.dictionaries(INTS, TEXT, max_size=2),
)
FLOATY_EVENTS = st.builds(
    Floaty,
    id=TEXT,
    values=st.lists(FLOATS, max_size=3),
    table=st.dictionaries(TEXT, FLOATS, max_size=2),
    point=st.none() | st.builds(Point3, x=INTS, label=TEXT, z=FLOATS),
) | st.builds(Anything, id=TEXT, anything=ANYTHING, values=st.lists(FLOATS, max_size=3))
SHAPED_EVENTS = st.builds(
    Shaped,
    id=TEXT,
    text=TEXT,
    when=st.timedeltas(),
    blob=st.binary(max_size=6),
    secret=TEXT,
)
COLLIDING_EVENTS = st.builds(
    Colliding,
    id=TEXT,
    first=INTS,
    second=INTS,
    points=st.lists(st.builds(Point, x=INTS, label=TEXT), max_size=2),
    other=TEXT,  # an extra field, under another field's serialization alias
)
INF_EVENTS = st.builds(InfAsStrings, id=TEXT, values=st.lists(FLOATS, max_size=3))
EVENTS = st.one_of(
    SCALAR_EVENTS, MIXED_EVENTS, FLOATY_EVENTS, SHAPED_EVENTS, COLLIDING_EVENTS, INF_EVENTS
)
TIMESTAMPS = st.one_of(st.integers(min_value=0, max_value=2**53), st.sampled_from([0, 2**70]))

# -- encoding ------------------------------------------------------------------------------------


@SETTINGS
@given(event=EVENTS, timestamp=TIMESTAMPS)
def test_every_writer_gives_0_10s_bytes_or_steps_aside(event: EventBase, timestamp: int) -> None:
    expected = reference(event, timestamp)
    write = compiled.writer(type(event), type(event).__event_type__)
    if write is not None:
        written = outcome(lambda: write(event, timestamp))
        assert written is None or written == expected
    direct = outcome(lambda: envelope_json(event, timestamp))
    assert direct is None or direct == expected
    assert outcome(lambda: JSONSerializer().serialize_event(event, timestamp)) == expected


@SETTINGS
@given(events=st.lists(EVENTS, max_size=6) | st.lists(SCALAR_EVENTS | MIXED_EVENTS, max_size=6))
def test_emit_many_batches_give_0_10s_bytes(events: list[EventBase]) -> None:
    expected = [reference(event, 7) for event in events]
    if any(not isinstance(e, bytes) for e in expected):
        assert not isinstance(outcome(lambda: JSONSerializer().serialize_events(events, 7)), list)
        return
    batch = envelopes_json(events, 7)
    assert all(got is None or got == want for got, want in zip(batch, expected, strict=True))
    assert JSONSerializer().serialize_events(events, 7) == expected


@SETTINGS
@given(events=st.lists(MIXED_EVENTS, min_size=2, max_size=5))
def test_a_run_of_one_class_written_in_one_call_gives_0_10s_bytes(events: list[Mixed]) -> None:
    expected = [reference(event, 3) for event in events]
    if all(isinstance(e, bytes) for e in expected):
        assert JSONSerializer().serialize_events(events, 3) == expected


def test_a_key_written_twice_keeps_0_10s_one_key() -> None:
    event = Colliding(id="x", first=1, second=2, renamed=3, other="extra")
    expected = (
        b'{"id": "x", "type": "colliding", "body": {"second": 2, "points": [], "other": "extra", '
        b'"first": 4}, "timestamp": 1}'
    )
    assert reference(event, 1) == expected
    assert JSONSerializer().serialize_event(event, 1) == expected
    assert JSONSerializer().serialize_events([event, event], 1) == [expected] * 2
    mixed = Anything(id="x", anything={1: "int", "1": "str"})
    assert JSONSerializer().serialize_events([mixed, mixed], 1) == [reference(mixed, 1)] * 2
    assert b'{"1": "str"}' in JSONSerializer().serialize_event(mixed, 1)


def test_infinities_written_as_strings_by_pydantic_core_keep_0_10s_spelling() -> None:
    event = InfAsStrings(id="x", values=[math.inf, math.nan])
    expected = b'{"id": "x", "type": "inf", "body": {"values": [Infinity, NaN]}, "timestamp": 1}'
    assert JSONSerializer().serialize_event(event, 1) == expected
    assert JSONSerializer().serialize_events([event, event], 1) == [expected] * 2


def test_an_integer_json_dumps_refuses_is_refused_on_every_path() -> None:
    huge = Mixed(id="x", counts={"n": 10**4300})
    for write in (
        lambda: JSONSerializer().serialize_event(huge, 1),
        lambda: JSONSerializer().serialize_events([huge, huge], 1),
        lambda: JSONSerializer().serialize_event(
            Scalars(id="x", text="", number=10**4300, flag=True, ratio=1.0), 1
        ),
    ):
        assert outcome(write) is ValueError  # 0.10's json.dumps error, not unreadable bytes
    near = Mixed(id="x", counts={"n": 10**4299}, texts=["1" * 5000])
    assert JSONSerializer().serialize_events([near, near], 1) == [reference(near, 1)] * 2


class SerializedId(EventBase):
    __topic__ = "t"
    __event_type__ = "serialized-id"

    id: Annotated[str, PlainSerializer(str.upper, return_type=str)] = "a"
    values: list[int] = []


def test_an_id_with_its_own_serializer_goes_into_the_envelope_as_it_is() -> None:
    events = [SerializedId(id="ab", values=[1]), SerializedId(id="cd")]
    assert JSONSerializer().serialize_events(events, 1) == [
        b'{"id": "ab", "type": "serialized-id", "body": {"values": [1]}, "timestamp": 1}',
        b'{"id": "cd", "type": "serialized-id", "body": {"values": []}, "timestamp": 1}',
    ]


def test_a_serializer_subclass_that_overrides_serialize_event_is_called_by_emit_many() -> None:
    class Marked(JSONSerializer):
        def serialize_event(self, event: EventBase, timestamp_ms: int | None = None) -> bytes:
            return b"marked " + super().serialize_event(event, timestamp_ms)

    events = [Mixed(id="a"), Mixed(id="b")]
    assert Marked().serialize_events(events, 1) == [b"marked " + reference(e, 1) for e in events]  # type: ignore[operator]


# -- decoding ------------------------------------------------------------------------------------

_SPACE = st.sampled_from(["", " ", "\n", "\t", "\r", "\x0c", "\x0b", "\xa0", "\ufeff"])
_NUMBER_TEXT = st.one_of(
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,30})(\.[0-9]{0,20})?([eE][+-]?[0-9]{0,4})?\Z"),
    st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "+1", "01", ".5", "1.", "1e999"]),
    st.sampled_from(["9" * 4300, "9" * 4301, "-" + "9" * 4301, "1" * 5000 + ".5", "1e-99999"]),
)
_STRING_TEXT = st.one_of(
    TEXT.map(lambda s: json.dumps(s, ensure_ascii=False)),
    TEXT.map(json.dumps),
    st.sampled_from(['"\\ud800"', '"\\udc00\\ud800"', '"\\u12"', '"\\x41"', '"\\\'"', '"\t"']),
)


def _documents(leaves: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        items = st.lists(st.tuples(_SPACE, inner), max_size=3)
        members = st.lists(st.tuples(_SPACE, _STRING_TEXT, _SPACE, inner), max_size=3)
        return st.one_of(
            items.map(lambda xs: "[" + ",".join(s + v for s, v in xs) + "]"),
            members.map(lambda ms: "{" + ",".join(a + k + b + ":" + v for a, k, b, v in ms) + "}"),
        )

    return st.recursive(leaves, grow, max_leaves=10)


_VALUES = _documents(st.one_of(_NUMBER_TEXT, _STRING_TEXT, st.sampled_from(["true", "null"])))


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    body = draw(_VALUES)
    envelope = draw(
        st.sampled_from(
            [
                '{"id": "a", "type": "t", "body": {"v": %s}, "timestamp": 1}',
                '{"id": "a", "id": "b", "type": "t", "body": %s, "body": {"v": 1}}',
                '{"id": "a", "type": "t", "body": {"v": 1}, "timestamp": %s}',
                '{"id": %s, "type": "t", "body": {}}',
                "%s",
            ]
        )
    )
    text = draw(_SPACE) + envelope.replace("%s", body) + draw(_SPACE)
    data = bytearray(text.encode("utf-8", "surrogatepass"))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):  # and a few broken bytes
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _decode_0_10(payload: bytes) -> Any:
    """json.loads of the text (0.10), then the envelope check; DecodeError for bad input."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return DecodeError
    return outcome(lambda: envelope_from_mapping(data))


def _same_result(a: Any, b: Any) -> bool:
    """The same envelope (NaN equal to NaN, -0.0 apart from 0.0, key order kept)."""
    if isinstance(a, Envelope) and isinstance(b, Envelope):
        return (a.id, a.type, a.timestamp) == (b.id, b.type, b.timestamp) and _same(a.body, b.body)
    return bool(a == b)


@settings(max_examples=1500, deadline=None, database=None)
@given(payload=payloads())
def test_the_parser_decodes_what_0_10_decoded_and_refuses_the_rest(payload: bytes) -> None:
    got = outcome(lambda: JSONDeserializer().deserialize(payload))
    expected = _decode_0_10(payload)
    if isinstance(expected, type):
        assert isinstance(got, type) and issubclass(got, DecodeError), (payload, got)
    else:
        assert _same_result(got, expected), payload


@SETTINGS
@given(
    depth=st.integers(min_value=1, max_value=5000),
    opener=st.sampled_from([b"[", b'{"a":']),
    cap=st.sampled_from([0, 16]),
)
def test_deep_nesting_is_decoded_or_refused_with_decode_error(
    depth: int, opener: bytes, cap: int
) -> None:
    closer = b"]" if opener == b"[" else b"}"
    payload = b'{"id": "a", "type": "t", "body": {"v": ' + opener * depth + b"1" * (opener != b"[")
    payload += closer * depth + b"}}"
    got = outcome(lambda: JSONDeserializer(bytes_per_container=cap).deserialize(payload))
    assert not isinstance(got, type) or issubclass(got, DecodeError)
