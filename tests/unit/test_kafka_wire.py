"""Kafka: topic names, the lenient record reader, record -> Message, delivery metadata. Pure."""

from __future__ import annotations

import base64
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("aiokafka")

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord

from dispytch.errors import InvalidTopicError
from dispytch.kafka import _compat
from dispytch.kafka.attempts import Committed, PartitionDeliveries, decode, encode
from dispytch.kafka.records import BadBatch, RawRecord, read_batches
from dispytch.kafka.subscription import subscription_for
from dispytch.kafka.topics import (
    MAX_TOPIC_LENGTH,
    check_topic,
    dead_letter_topic,
    fallback_topic,
    is_dead_letter_topic,
)
from dispytch.kafka.wire import lenient_message, to_message
from dispytch.listener.consumer import Message
from dispytch.routing import TopicPattern

FUZZ = settings(max_examples=150, deadline=None)

# -- topic names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "rule"),
    [
        ("", "empty"),
        (".", "reserved"),
        ("..", "reserved"),
        ("x" * 250, "length"),
        ("a b", "characters"),
        ("a:b", "characters"),
        ("é", "characters"),
        ("a\nb", "characters"),
    ],
)
def test_topic_names_kafka_refuses(topic: str, rule: str) -> None:
    with pytest.raises(InvalidTopicError) as caught:
        check_topic(topic)
    assert caught.value.rule == rule
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("topic", ["a", "orders.v1", "A-b_c.9", "x" * 249, "..."])
def test_topic_names_kafka_accepts(topic: str) -> None:
    check_topic(topic)


def test_dead_letter_topics_are_valid_distinct_and_stable() -> None:
    assert dead_letter_topic("orders") == "orders.dlq"
    long_a, long_b = "a" * 249, "a" * 248 + "b"
    for topic in (long_a, long_b, "x" * 246):
        name = dead_letter_topic(topic)
        check_topic(name)
        assert name.endswith(".dlq") and is_dead_letter_topic(name)
        assert dead_letter_topic(topic) == name
    assert dead_letter_topic(long_a) != dead_letter_topic(long_b)
    assert len(dead_letter_topic("x" * 245)) == MAX_TOPIC_LENGTH  # just fits unhashed
    assert dead_letter_topic("x" * 245) == "x" * 245 + ".dlq"


@given(st.text(max_size=300))
@FUZZ
def test_every_group_gets_a_valid_fallback_topic(group: str) -> None:
    name = fallback_topic(group)
    check_topic(name)
    assert is_dead_letter_topic(name)
    assert fallback_topic(group) == name


def test_fallback_topics_of_different_groups_differ() -> None:
    assert fallback_topic("billing") == "dispytch.dlq.billing"
    assert fallback_topic("a:b") != fallback_topic("a_b")
    assert fallback_topic("a" * 300) != fallback_topic("a" * 299)


def test_a_pattern_subscription_never_matches_a_dead_letter_topic() -> None:
    sub = subscription_for(
        [TopicPattern.parse("orders.{kind}", "."), TopicPattern.parse("audit.dlq", ".")]
    )
    assert sub.pattern is not None
    regex = re.compile(sub.pattern)
    assert regex.match("orders.created")
    assert not regex.match("orders.dlq")
    assert not regex.match(dead_letter_topic("orders"))
    assert regex.match("audit.dlq")  # a literal handler topic is taken as written
    assert not re.compile(
        subscription_for([TopicPattern.parse("{a}.{b}.{c}", ".")]).pattern or ""
    ).match(fallback_topic("g"))


# -- the lenient record reader -----------------------------------------------------------------


def _batch(
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    *,
    base_offset: int = 0,
    compression: int = 0,
    attributes: int = 0,
) -> bytearray:
    builder = DefaultRecordBatchBuilder(2, compression, 0, -1, -1, -1, 1 << 20)
    for n, (key, value, headers) in enumerate(records):
        builder.append(n, timestamp=1000 + n, key=key, value=value, headers=headers)
    data = builder.build()
    struct.pack_into(">q", data, 0, base_offset)
    return data


def _swap(data: bytearray, old: bytes, new: bytes) -> bytearray:
    from aiokafka.record.default_records import DefaultRecordBase
    from aiokafka.record.util import calc_crc32c

    at = data.find(old)
    data[at : at + len(new)] = new
    crc = calc_crc32c(bytes(data[DefaultRecordBase.ATTRIBUTES_OFFSET :]))
    struct.pack_into(">I", data, DefaultRecordBase.CRC_OFFSET, crc)
    return data


def test_reads_what_aiokafka_cannot_header_names_as_bytes() -> None:
    data = _batch(
        [(b"k", b"v1", [("PLACEHOLD", b"x")]), (None, None, [("ok", None)])], base_offset=40
    )
    data = _swap(data, b"PLACEHOLD", b"\xff\xfebad\x00\x01\x02\x03")
    got = list(read_batches(bytes(data)))
    assert got == [
        RawRecord(40, 1000, b"k", b"v1", ((b"\xff\xfebad\x00\x01\x02\x03", b"x"),)),
        RawRecord(41, 1001, None, None, ((b"ok", None),)),
    ]


@pytest.mark.parametrize("compression", [1, 2, 3, 4])  # gzip, snappy, lz4, zstd
def test_reads_compressed_batches(compression: int) -> None:
    codecs = {1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
    from aiokafka import codec

    if not getattr(codec, f"has_{codecs[compression]}")():
        pytest.skip(f"{codecs[compression]} not installed")
    data = _batch([(None, b"v%d" % n, []) for n in range(3)], compression=compression)
    assert [r.value for r in read_batches(bytes(data))] == [b"v0", b"v1", b"v2"]


def test_a_corrupt_batch_is_reported_with_its_offsets_and_the_next_one_read() -> None:
    bad = _batch([(None, b"a", []), (None, b"b", [])], base_offset=10)
    bad[-1] ^= 0xFF  # CRC no longer matches
    good = _batch([(None, b"c", [])], base_offset=12)
    assert list(read_batches(bytes(bad + good))) == [
        BadBatch(10, 12, "CRC mismatch"),
        RawRecord(12, 1000, None, b"c", ()),
    ]


def test_a_partial_batch_at_the_end_is_left_for_the_next_fetch() -> None:
    first = _batch([(None, b"a", [])])
    second = _batch([(None, b"b", [])], base_offset=1)
    assert [r.value for r in read_batches(bytes(first + second[:-3]))] == [b"a"]  # type: ignore[union-attr]


def test_control_batches_and_aborted_transactions_are_skipped() -> None:
    data = _batch([(None, b"t", [])], base_offset=0)
    # mark it transactional, producer id 7
    struct.pack_into(">h", data, 21, 0x10)
    struct.pack_into(">q", data, 43, 7)
    data = _swap(data, b"", b"")
    control = _batch([(b"\x00\x00\x00\x00", b"", [])], base_offset=1)  # abort marker
    struct.pack_into(">h", control, 21, 0x30)
    struct.pack_into(">q", control, 43, 7)
    control = _swap(control, b"", b"")
    after = _batch([(None, b"after", [])], base_offset=2)
    stream = bytes(data + control + after)
    committed = list(read_batches(stream, aborted=((7, 0),), read_committed=True))
    assert [r.value for r in committed] == [b"after"]  # type: ignore[union-attr]
    uncommitted = list(read_batches(stream))
    assert [r.value for r in uncommitted] == [b"t", b"after"]  # type: ignore[union-attr]


@given(st.binary(max_size=400))
@FUZZ
def test_the_reader_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    for item in read_batches(data, check_crc=False):
        assert isinstance(item, RawRecord | BadBatch)


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=20)),
            st.one_of(st.none(), st.binary(max_size=40)),
            st.lists(
                st.tuples(st.binary(max_size=12), st.one_of(st.none(), st.binary(max_size=12))),
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
@FUZZ
def test_the_reader_keeps_any_header_bytes(
    records: list[tuple[bytes | None, bytes | None, list[tuple[bytes, bytes | None]]]],
) -> None:
    placeholders = []
    plain = []
    for n, (key, value, headers) in enumerate(records):
        named = []
        for m, (name, header_value) in enumerate(headers):
            marker = f"{n:02d}{m:02d}".ljust(max(len(name), 4), "#")[: max(len(name), 4)]
            placeholders.append((marker.encode(), name))
            named.append((marker, header_value))
        plain.append((key, value, named))
    data = _batch(plain)
    for marker, name in placeholders:
        if len(name) == len(marker):
            data = _swap(data, marker, name)
    got = list(read_batches(bytes(data)))
    assert [(r.key, r.value) for r in got] == [(k, v) for k, v, _ in records]  # type: ignore[union-attr]


# -- record -> Message ---------------------------------------------------------------------------


@given(
    st.text(max_size=30),
    st.one_of(st.none(), st.binary(max_size=30)),
    st.one_of(st.none(), st.binary(max_size=60)),
    st.lists(st.tuples(st.binary(max_size=20), st.one_of(st.none(), st.binary(max_size=20)))),
)
@FUZZ
def test_any_record_becomes_a_message(
    topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[bytes, bytes | None]]
) -> None:
    record = RawRecord(5, 1, key, value, tuple(headers))
    message, problem = lenient_message(topic, 3, record, 2)
    assert isinstance(message, Message)
    assert (message.topic, message.partition, message.offset, message.key) == (topic, 3, 5, key)
    assert message.payload == (value or b"")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in message.headers.items())
    undecodable = []
    for index, (name, header_value) in enumerate(headers):
        try:
            name.decode()
        except UnicodeDecodeError:
            undecodable.append((index, name, header_value or b""))
    assert (problem is not None) == bool(undecodable)
    if undecodable:
        assert message.headers["x-dispytch-undecodable"] == "headers"
        assert "\n" not in problem  # type: ignore[operator]
        for index, name, header_value in undecodable:
            pair = message.headers[f"x-dispytch-undecodable-header-{index}"]
            assert [base64.b64decode(part) for part in pair.split(":")] == [name, header_value]


@given(
    st.one_of(st.none(), st.binary(max_size=30)),
    st.lists(st.tuples(st.text(max_size=10), st.one_of(st.none(), st.binary(max_size=20)))),
)
@FUZZ
def test_any_aiokafka_record_becomes_a_message(
    value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> None:
    record = ConsumerRecord("t", 0, 7, 1, 0, None, value, None, 0, 0, tuple(headers))
    message = to_message(record, 1)
    assert message.payload == (value or b"")
    assert all(isinstance(v, str) for v in message.headers.values())
    assert message.extra is record


# -- delivery metadata -------------------------------------------------------------------------


def test_delivery_metadata_round_trips_and_ignores_what_is_not_ours() -> None:
    assert decode(encode(120)) == Committed(120)
    assert decode(encode(120, (110, 2, False), (104, 3))) == Committed(
        120, (110, 2, False), {104: 3}
    )
    assert decode(encode(120, (110, 3, True))) == Committed(120, (110, 3, True))
    for foreign in ("", "some app's metadata", "dispytch/1", "dispytch/1 w=x", "dispytch/2 w=5"):
        assert decode(foreign) is None
    assert decode("dispytch/1 w=5 r=7") is None


def test_a_first_crash_recovers_its_range_as_usual_as_attempt_2() -> None:
    assert PartitionDeliveries.from_committed(50, "").recover_below == 0
    assert PartitionDeliveries.from_committed(130, encode(120)).recover_below == 0  # all settled
    state = PartitionDeliveries.from_committed(100, encode(120), highwater=115)
    assert (state.recover_below, state.serial, state.attempt(101)) == (115, False, 2)
    assert decode(state.metadata()) == Committed(120, (115, 2, False))


def test_a_crash_inside_a_recovered_range_goes_one_record_at_a_time() -> None:
    again = PartitionDeliveries.from_committed(104, encode(120, (115, 2, False)))
    assert again.serial and again.attempt(104) == 3 and again.attempt(110) == 3
    again.current = (104, 3)
    assert decode(again.metadata()) == Committed(120, (120, 3, True), {104: 3})
    # It died on 104 again: only 104 counts up, the others were not handed out.
    third = PartitionDeliveries.from_committed(104, again.metadata())
    assert third.serial and third.attempt(104) == 4 and third.attempt(105) == 3
    # A range already recovered past: the next crash is a first one again.
    later = PartitionDeliveries.from_committed(130, encode(150, (120, 3, True)))
    assert not later.serial and later.attempt(131) == 2


# -- private aiokafka access: the fallbacks ------------------------------------------------------


class _Bare:
    """Looks like no aiokafka consumer at all."""

    def assignment(self) -> set[object]:
        return {"tp"}


async def test_compat_falls_back_when_the_client_looks_different() -> None:
    bare = _Bare()
    assert _compat.set_rebalance_listener(bare, lambda inner: inner) is False  # type: ignore[arg-type]
    assert _compat.fetcher_error(bare) is None  # type: ignore[arg-type]
    assert await _compat.committed(bare, []) is None  # type: ignore[arg-type]
    assert _compat.failed_partition(bare) is None  # type: ignore[arg-type]
    assert _compat.position(bare, "tp") is None  # type: ignore[arg-type]
    assert _compat.ready_partitions(bare) == ["tp"]  # type: ignore[arg-type]
    assert await _compat.fetch_raw(bare, "tp", 0) is None  # type: ignore[arg-type]
    _compat.forget_topic(bare, "t")  # nothing to forget, nothing raised
