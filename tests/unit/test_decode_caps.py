"""Decode caps: a payload cannot make the decoder allocate many times its size."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from dispytch import ConfigurationError, DecodeError, Event, HandlerGroup
from dispytch.serialization.deserializer import STRUCTURE_CHECK_BYTES, Deserializer
from dispytch.serialization.json import JSONDeserializer
from dispytch.serialization.msgpack import MessagePackDeserializer
from tests.unit.support import deliver, envelope

MiB = 1024 * 1024


def _json_envelope(items: bytes) -> bytes:
    return b'{"id": "x", "type": "t", "body": {"items": [' + items + b"]}, " + b'"timestamp": 1}'


def _json_list(unit: bytes, size: int) -> bytes:
    """An envelope of about ``size`` bytes whose body holds ``[unit, unit, ...]``."""
    return _json_envelope(b",".join([unit] * (size // (len(unit) + 1))))


def _packed(data: bytes) -> bytes:
    out: bytes = msgpack.packb(json.loads(data), use_bin_type=True)
    return out


def _peak(decode: Callable[[], Any]) -> tuple[BaseException | None, int]:
    """Run ``decode``; return what it raised and the peak of memory it allocated."""
    error: BaseException | None = None
    tracemalloc.start()
    try:
        decode()
    except BaseException as exc:
        error = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return error, peak


def test_a_16_mib_json_container_bomb_is_refused_before_decoding() -> None:
    bomb = b"[" + b",".join([b"{}"] * (16 * MiB // 3)) + b"]"
    assert len(bomb) == pytest.approx(16 * MiB, rel=0.01)
    error, peak = _peak(lambda: JSONDeserializer().deserialize(bomb))
    assert isinstance(error, DecodeError)
    assert "objects/arrays" in str(error)
    # Documented bound: nothing is decoded (without the cap: ~400 MB).
    assert peak < 1 * MiB, peak


def test_a_16_mib_msgpack_container_bomb_is_refused_within_its_budget() -> None:
    count = 16 * MiB - 5
    bomb = b"\xdd" + count.to_bytes(4, "big") + b"\x80" * count  # array32 of empty fixmaps
    assert len(bomb) == pytest.approx(16 * MiB, rel=0.01)
    error, peak = _peak(lambda: MessagePackDeserializer().deserialize(bomb))
    assert isinstance(error, DecodeError)
    # Documented bound: at most its budget of containers, ~9x (without the cap: ~1.2 GB).
    assert peak < 10 * len(bomb), peak


@pytest.mark.parametrize(
    ("unit", "filler"),
    [(b'{"":0}', b'"ab"'), (b'{"a":0}', b'"\\u0100"'), (b"[0]", b'"ab"'), (b'"ab"', None)],
    ids=["dict+strings", "dict+wide-strings", "list+strings", "strings"],
)
def test_accepted_dense_json_stays_within_the_documented_expansion(
    unit: bytes, filler: bytes | None
) -> None:
    # Pad each container with short strings up to the allowed density: the worst accepted case.
    while filler is not None and len(unit) + 1 < 16:
        unit += b"," + filler
    payload = _json_list(unit, 2 * MiB)
    error, peak = _peak(lambda: JSONDeserializer().deserialize(payload))
    assert error is None
    assert peak < 20 * len(payload), peak / len(payload)


@pytest.mark.parametrize(
    "unit",
    [[{"": 0}, 0, 0, 0, 0, 0], ["\u0100"], ["ab"]],
    ids=["dict+ints", "wide-strings", "strings"],
)
def test_accepted_dense_msgpack_stays_within_the_documented_expansion(unit: list[Any]) -> None:
    # {"": 0} packs to 3 bytes, each 0 to 1: one container per 8 bytes, the allowed density.
    body = {"items": unit * (2 * MiB // 8)}
    payload: bytes = msgpack.packb({"id": "x", "type": "t", "body": body}, use_bin_type=True)
    error, peak = _peak(lambda: MessagePackDeserializer().deserialize(payload))
    assert error is None
    assert peak < 30 * len(payload), peak / len(payload)


# Ordinary bodies above the check threshold: records of a few short fields.
RECORD = b'{"sku": "A-1", "qty": 2}'


@pytest.mark.parametrize(
    ("deserializer", "encode"),
    [(JSONDeserializer(), lambda b: b), (MessagePackDeserializer(), _packed)],
    ids=["json", "msgpack"],
)
def test_large_ordinary_payload_is_accepted(
    deserializer: Deserializer, encode: Callable[[bytes], bytes]
) -> None:
    payload = encode(_json_list(RECORD, 1 * MiB))
    assert len(payload) > STRUCTURE_CHECK_BYTES
    assert len(deserializer.deserialize(payload).body["items"]) > 10_000


@pytest.mark.parametrize(
    ("deserializer", "encode"),
    [(JSONDeserializer(), lambda b: b), (MessagePackDeserializer(), _packed)],
    ids=["json", "msgpack"],
)
def test_payload_denser_than_the_cap_is_refused(
    deserializer: Deserializer, encode: Callable[[bytes], bytes]
) -> None:
    payload = encode(_json_list(b"[]", 1 * MiB))
    with pytest.raises(DecodeError, match="bytes_per_container"):
        deserializer.deserialize(payload)


@pytest.mark.parametrize(
    ("deserializer", "encode"),
    [(JSONDeserializer(), lambda b: b), (MessagePackDeserializer(), _packed)],
    ids=["json", "msgpack"],
)
def test_small_payloads_skip_the_structure_check(
    deserializer: Deserializer, encode: Callable[[bytes], bytes]
) -> None:
    payload = encode(_json_list(b"{}", STRUCTURE_CHECK_BYTES - 1024))
    assert len(payload) <= STRUCTURE_CHECK_BYTES
    assert deserializer.deserialize(payload).body["items"][0] == {}


@pytest.mark.parametrize(
    ("deserializer", "encode"),
    [
        (JSONDeserializer(bytes_per_container=0), lambda b: b),
        (MessagePackDeserializer(bytes_per_container=0), _packed),
        (JSONDeserializer(bytes_per_container=2), lambda b: b),
        (MessagePackDeserializer(bytes_per_container=1), _packed),
    ],
    ids=["json-off", "msgpack-off", "json-2", "msgpack-1"],
)
def test_the_structure_cap_can_be_relaxed(
    deserializer: Deserializer, encode: Callable[[bytes], bytes]
) -> None:
    payload = encode(_json_list(b"[]", 1 * MiB))
    assert deserializer.deserialize(payload).body["items"][0] == []


def test_max_payload_bytes_is_still_checked_with_the_structure_check_off() -> None:
    payload = _json_list(RECORD, 200_000)
    for deserializer in (
        JSONDeserializer(max_payload_bytes=100_000, bytes_per_container=0),
        MessagePackDeserializer(max_payload_bytes=100_000, bytes_per_container=0),
    ):
        with pytest.raises(DecodeError, match="exceeds max_payload_bytes"):
            deserializer.deserialize(
                payload if isinstance(deserializer, JSONDeserializer) else _packed(payload)
            )


@pytest.mark.parametrize(
    "make",
    [
        lambda: JSONDeserializer(max_payload_bytes=0),
        lambda: JSONDeserializer(bytes_per_container=-1),
        lambda: MessagePackDeserializer(max_payload_bytes=-5),
    ],
)
def test_bad_caps_are_a_configuration_error(make: Callable[[], object]) -> None:
    with pytest.raises(ConfigurationError):
        make()


async def test_a_too_dense_event_is_dead_lettered_once_and_the_next_is_handled() -> None:
    got: list[int] = []
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed", retries=3, retry_interval=0)
    async def handle(event: Event[dict[str, Any]]) -> None:
        got.append(event.body["n"])

    bomb = _json_list(b"{}", 300_000)  # a valid envelope, too dense to decode
    consumer = await deliver(group, [("orders", bomb), ("orders", envelope("placed", {"n": 1}))])
    assert got == [1]
    ((message, failure),) = consumer.dead
    assert message.payload == bomb
    assert (failure.reason, failure.error_type, failure.attempts) == ("decode", "DecodeError", 1)
