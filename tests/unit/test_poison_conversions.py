"""Fuzzing what the Redis and NATS adapters turn into a Message: arbitrary bytes for channel,
stream key, field names and values, subjects and header blocks never raise, and always make
a Message, marked Undecodable exactly when Dispytch cannot read it; the dead letter of any of
them can be written (its headers are text the client accepts)."""

from __future__ import annotations

import asyncio
import base64
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispytch.listener.consumer import Failure, Message
from dispytch.poison import UNDECODABLE_HEADER, Undecodable, dead_letter_headers
from tests.helpers import is_utf8

nats = pytest.importorskip("nats")
pytest.importorskip("redis")

from nats.aio.client import Client as NATSClient  # noqa: E402

from dispytch.nats import _compat  # noqa: E402
from dispytch.nats.dead_letters import dead_letter_nats_headers  # noqa: E402
from dispytch.nats.wire import core_message, nats_headers, to_message  # noqa: E402
from dispytch.redis.fields import encode_fields  # noqa: E402
from dispytch.redis.records import channel_message, entry_message  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAILURE = Failure("handler", "E", "boom\nline two", "h", 1, 1)
# What nats-py accepts as a header name when it publishes.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _writable(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        assert isinstance(name, str) and isinstance(value, str)
        name.encode(), value.encode()  # the clients encode strictly


# -- Redis ---------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=40), st.binary(max_size=40))
def test_any_pubsub_channel_makes_a_message(channel: bytes, data: bytes) -> None:
    message = channel_message(channel, data)
    assert message.payload == data and isinstance(message.topic, str)
    if is_utf8(channel):
        assert message.topic == channel.decode() and message.undecodable is None
    else:
        undecodable = message.undecodable
        assert isinstance(undecodable, Undecodable) and undecodable.parts == ("topic",)
        raw = undecodable.headers["x-dispytch-original-topic-b64"]
        assert base64.b64decode(raw) == channel
    _writable(dead_letter_headers(message, FAILURE))


fields = st.dictionaries(
    st.one_of(
        st.sampled_from([b"payload", b"key", b"h:trace", b"h:\xff"]),
        st.binary(max_size=12),
        st.binary(max_size=12).map(lambda b: b"h:" + b),
    ),
    st.binary(max_size=24),
    max_size=6,
)


@FUZZ
@given(st.one_of(st.text(max_size=20), st.binary(max_size=20)), fields)
def test_any_stream_entry_makes_a_message(stream: str | bytes, entry: dict[bytes, bytes]) -> None:
    message = entry_message(stream, "1-0", entry, 3)
    assert isinstance(message.topic, str) and message.delivery_attempt == 3
    headers_ok = all(
        is_utf8(name[2:]) and is_utf8(value)
        for name, value in entry.items()
        if name.startswith(b"h:")
    )
    readable = isinstance(stream, str) and b"payload" in entry and headers_ok
    if readable:
        assert message.extra == "1-0" and message.payload == entry[b"payload"]
        assert message.key == entry.get(b"key") and message.undecodable is None
    else:
        undecodable = message.undecodable
        assert isinstance(undecodable, Undecodable)
        assert message.extra == (stream, "1-0")
        if b"payload" in entry:
            assert message.payload == entry[b"payload"]
        else:  # every field is kept, base64
            assert "payload" in undecodable.parts
            kept = [v for k, v in undecodable.headers.items() if "undecodable-header" in k]
            assert len(kept) == len(entry)
    _writable(dead_letter_headers(message, FAILURE))


@given(st.binary(max_size=30), st.one_of(st.none(), st.binary(max_size=10)))
def test_stream_fields_round_trip(payload: bytes, key: bytes | None) -> None:
    message = entry_message("s", "1-0", encode_fields(payload, key, {"a": "b"}), 1)
    assert (message.payload, message.key, dict(message.headers)) == (payload, key, {"a": "b"})


# -- NATS ----------------------------------------------------------------------------------------

header_blocks = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda rest: b"NATS/1.0" + rest, st.binary(max_size=60)),
    st.builds(lambda rest: b"NATS/1.0 " + rest + b"\r\n\r\n", st.binary(max_size=30)),
    st.builds(
        lambda name, value: b"NATS/1.0\r\n" + name + b": " + value + b"\r\n\r\n",
        st.binary(max_size=12),
        st.binary(max_size=20),
    ),
    st.sampled_from(
        [
            b"NATS/1.0\r\nx-dispytch-key-b64: !!!\r\n\r\n",
            b"NATS/1.0\r\nx-dispytch-key-b64: AAEC\r\n\r\n",
            b"NATS/1.0\r\nx-dispytch-key: k\r\n\r\n",
            b"NATS/1.0 404\r\n\r\n",
        ]
    ),
)


def _client() -> NATSClient:
    return _compat.harden(NATSClient())


@FUZZ
@given(st.binary(min_size=1, max_size=40), header_blocks, st.booleans(), st.binary(max_size=20))
@pytest.mark.private_access
def test_any_nats_delivery_makes_a_message(
    subject: bytes, block: bytes, jetstream: bool, data: bytes
) -> None:
    client = _client()
    reply = b"$JS.ACK.s.c.1.2.3.1700000000000000000.0" if jetstream else b""
    headers = asyncio.run(client._process_headers(block))
    msg = client._build_message(1, subject, reply, data, headers)
    message = (to_message if jetstream else core_message)(msg)
    assert isinstance(message, Message) and message.payload == data
    assert isinstance(message.topic, str)
    undecodable = message.undecodable
    if not is_utf8(subject):
        assert isinstance(undecodable, Undecodable) and "topic" in undecodable.parts
        raw = undecodable.headers["x-dispytch-original-topic-b64"]
        assert base64.b64decode(raw) == subject
    assert message.extra is msg
    if undecodable is None:
        assert message.topic == subject.decode()
        if jetstream:
            assert "Status" not in message.headers  # a stored message never has a status
    dead = nats_headers(dead_letter_nats_headers(message, FAILURE), message.key)
    assert dead is not None
    _writable(dead)
    assert all(HEADER_NAME.fullmatch(name) for name in dead)
    marker = UNDECODABLE_HEADER if undecodable is not None else "x-dispytch-reason"
    assert dead[marker]


@pytest.mark.private_access
def test_a_header_name_that_is_not_ascii_makes_the_headers_undecodable() -> None:
    # nats-py 2.16 drops such a header without a word: the handler would never see it.
    client = _client()
    block = b"NATS/1.0\r\ntrace: t-1\r\n\xffname\xfe: v\r\n\r\n"
    headers = asyncio.run(client._process_headers(block))
    assert isinstance(headers, _compat.UnparsedHeaders) and headers.raw == block
    message = core_message(client._build_message(1, b"s", b"", b"x", headers))
    assert isinstance(message.undecodable, Undecodable) and message.undecodable.parts == (
        "headers",
    )
    # A value that is not UTF-8 is nats-py's to decode (replacement characters): handled.
    plain = asyncio.run(client._process_headers(b"NATS/1.0\r\nname: \xff\r\n\r\n"))
    assert not isinstance(plain, _compat.UnparsedHeaders) and plain == {"name": "\ufffd"}


@pytest.mark.private_access
def test_a_hardened_client_skips_pongs_of_timed_out_flushes() -> None:
    async def run() -> list[bool]:
        client = _client()
        loop = asyncio.get_running_loop()
        timed_out, waiting = loop.create_future(), loop.create_future()
        timed_out.cancel()
        client._pongs[:] = [timed_out, waiting]
        await client._process_pong()  # nats-py itself raises InvalidStateError here
        return [waiting.done(), not client._pongs]

    assert asyncio.run(run()) == [True, True]


def test_compat_finds_what_it_needs_in_this_nats_py() -> None:
    # If nats-py renames what _compat patches, harden() falls back silently but loudly in the
    # log; this makes CI say so instead.
    client = NATSClient()
    for name in ("_build_message", "_process_headers", "_process_pong", "_pongs", "msg_class"):
        assert hasattr(client, name), name
    assert hasattr(client, "_reading_task") and hasattr(client, "_flush_pending")
    assert _compat.harden(client) is client and _compat.harden(client) is client
    assert _compat.reader_alive(client)  # no reader task yet: cannot tell, so alive
