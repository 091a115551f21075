"""Dead letters on JetStream.

Dead letters of topic ``T`` are stored under subject ``{prefix}.T`` in their own stream
(``dispytch_dlq`` by default, capturing ``dispytch_dlq.>``). Not ``T.dlq`` in the event stream:
JetStream lets a subject live in one stream only, and a handler for ``orders.{kind}`` would
then receive the dead letters of ``orders``. Each dead letter is the original bytes with the
original headers plus ``x-dispytch-*`` headers saying what failed; it is published with a
PubAck, and the listener acks the original only after it.

**The fallback subject** ``{prefix}._fallback.{group}`` (one per consumer group, in the same
stream) takes the dead letters that cannot go to ``{prefix}.T``: a subject that would be too
long for the server (:data:`~dispytch.nats.producer.MAX_SUBJECT_BYTES`), a subject that is not
UTF-8, or a store that failed for the topic's own subject. The original subject is in the
``x-dispytch-original-topic`` header and :func:`read_dead_letters` finds them by it. A dead
letter the server cannot take whole (payload plus headers over ``max_payload``) goes there
with its payload cut to fit, marked by ``x-dispytch-payload-truncated`` (the original size;
and when the original headers alone are too large, they are left out:
``x-dispytch-headers-dropped`` counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncGenerator, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from dispytch.dead_letter import DeadLetter
from dispytch.listener.consumer import FORWARDED_HEADER_PREFIX, Failure, Message
from dispytch.nats._compat import connection_of
from dispytch.nats.producer import MAX_SUBJECT_BYTES, header_bytes, publish_acked
from dispytch.nats.streams import ensure_stream
from dispytch.nats.wire import KEY_B64_HEADER, KEY_HEADER, decode_key, nats_headers
from dispytch.poison import dead_letter_headers, header_pair

__all__ = [
    "DEFAULT_DEAD_LETTER_STREAM",
    "DeadLetterStore",
    "dead_letter_nats_headers",
    "read_dead_letters",
]

DEFAULT_DEAD_LETTER_STREAM = "dispytch_dlq"

#: Seconds to wait for dead letters that the stream says are there.
_READ_TIMEOUT = 5.0
#: Messages per fetch when reading them back.
_PAGE = 256
#: Fallback dead letters examined at most by one :func:`read_dead_letters` call.
_FALLBACK_SCAN = 10_000
FALLBACK_TOKEN = "_fallback"
_ORIGINAL_TOPIC = "x-dispytch-original-topic"
_TRUNCATED = "x-dispytch-payload-truncated"
_HEADERS_DROPPED = "x-dispytch-headers-dropped"
_DISPYTCH = "x-dispytch-"
_NOT_IN_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
# The key travels in these headers; a dead letter carries it again from ``Message.key``.
_KEY_HEADERS = frozenset(
    name.replace("x-dispytch-", prefix)
    for name in (KEY_HEADER, KEY_B64_HEADER)
    for prefix in ("x-dispytch-", FORWARDED_HEADER_PREFIX)
)
# The header names nats-py sends (RFC 7230 tokens); it raises on any other.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def group_token(group: str) -> str:
    """``group`` as one subject token: readable, and distinct per group."""
    token = _NOT_IN_TOKEN.sub("_", group)[:64] or "_"
    if token != group:
        token += "_" + hashlib.sha256(group.encode()).hexdigest()[:10]
    return token


def valid_subject(subject: str) -> bool:
    try:
        size = len(subject.encode())
    except UnicodeEncodeError:
        return False
    return size <= MAX_SUBJECT_BYTES and "" not in subject.split(".")


def dead_letter_nats_headers(message: Message, failure: Failure) -> dict[str, str]:
    """The headers of ``message``'s dead letter (not the key), as nats-py will send them."""
    headers: dict[str, str] = {}
    for index, (name, value) in enumerate(dead_letter_headers(message, failure).items()):
        # Nats-* headers steer the publish (dedup id, expected stream...): not copied.
        if name.startswith("Nats-") or name in _KEY_HEADERS:
            continue
        if _HEADER_NAME.fullmatch(name):
            headers[name] = value
        else:  # nats-py refuses to send such a name (it came in anyway): keep it base64
            raw_name = name.encode("utf-8", "backslashreplace")
            raw_value = value.encode("utf-8", "backslashreplace")
            headers.update((header_pair(index, raw_name, raw_value),))
    return headers


class DeadLetterStore:
    """Publishes dead letters to stream ``stream`` under ``{prefix}.{topic}``, or under the
    fallback subject ``{prefix}._fallback.{group}`` (see the module docstring).

    The stream is created on first use if missing (``stream_options`` under nats-py's
    ``StreamConfig`` names, e.g. ``{"max_age": 30 * 86400}``; kept forever by default).
    """

    def __init__(
        self,
        jetstream: JetStreamContext,
        stream: str = DEFAULT_DEAD_LETTER_STREAM,
        prefix: str | None = None,
        *,
        stream_options: dict[str, Any] | None = None,
        timeout: float = 10.0,
        connection: NATSClient | None = None,
    ) -> None:
        self.jetstream = jetstream
        #: The context's connection (the backend passes it; else read from the context).
        self.connection = connection if connection is not None else connection_of(jetstream)
        self.stream = stream
        self.prefix = prefix or stream
        self.stream_options = dict(stream_options or {})
        self.timeout = timeout
        self._ready = False
        self._lock = asyncio.Lock()

    def subject(self, topic: str) -> str | None:
        """The dead-letter subject of ``topic``; ``None`` when it cannot be one (too long, not
        UTF-8, an empty token): such dead letters go to the fallback subject."""
        subject = f"{self.prefix}.{topic}"
        return subject if valid_subject(subject) else None

    def fallback_subject(self, group: str) -> str:
        """The fallback dead-letter subject of consumer group ``group``."""
        return f"{self.prefix}.{FALLBACK_TOKEN}.{group_token(group)}"

    async def ensure(self) -> None:
        """Create the dead-letter stream if it does not exist yet."""
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                await ensure_stream(
                    self.jetstream, self.stream, [f"{self.prefix}.>"], self.stream_options
                )
                self._ready = True

    async def put(
        self, message: Message, failure: Failure, *, group: str = "dispytch", fallback: bool = False
    ) -> None:
        """Store ``message``'s original bytes with its headers and the failure headers; raise if
        not stored. In ``group``'s fallback subject when ``fallback``, or when the topic makes
        no valid subject."""
        await self.ensure()
        headers = dead_letter_nats_headers(message, failure)
        readable = message.undecodable is None or not message.undecodable.topic_unreadable
        subject = None if fallback or not readable else self.subject(message.topic)
        payload = message.payload
        if subject is None:
            subject = self.fallback_subject(group)
            payload = self._fit(payload, headers, message.key)
        await publish_acked(
            self.jetstream,
            subject,
            payload,
            nats_headers(headers, message.key),
            self.timeout,
            self.connection,
        )

    def _fit(self, payload: bytes, headers: dict[str, str], key: bytes | None) -> bytes:
        """``payload``, cut to what the server takes with the headers (the fallback must be
        able to store every message): the original headers go first, then payload bytes; what
        was cut is said in the headers."""
        connection = self.connection
        if connection is None:
            return payload
        limit = connection.max_payload
        if len(payload) + header_bytes(nats_headers(headers, key)) <= limit:
            return payload
        if header_bytes(nats_headers(headers, key)) > limit // 2:
            originals = [name for name in headers if not name.startswith(_DISPYTCH)]
            for name in originals:
                del headers[name]
            headers[_HEADERS_DROPPED] = str(len(originals))
        headers[_TRUNCATED] = str(len(payload))
        return payload[: max(0, limit - header_bytes(nats_headers(headers, key)))]


async def read_dead_letters(
    js: JetStreamContext, stream: str, prefix: str, topic: str, limit: int
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``topic``, oldest first, without removing them: those
    under ``{prefix}.{topic}``, then those of ``topic`` under the fallback subjects.

    Reads through short-lived consumers that acknowledge nothing and are deleted afterwards.
    """
    out: list[DeadLetter] = []
    subject = f"{prefix}.{topic}"
    if valid_subject(subject):
        out = await _read(js, stream, subject, topic, limit, lambda headers: True)
    if len(out) < limit:
        out += await _read(
            js,
            stream,
            f"{prefix}.{FALLBACK_TOKEN}.>",
            topic,
            limit - len(out),
            lambda headers: headers.get(_ORIGINAL_TOPIC) == topic,
            scan=_FALLBACK_SCAN,
        )
    return out


async def _read(
    js: JetStreamContext,
    stream: str,
    subject: str,
    topic: str,
    limit: int,
    keep: Callable[[dict[str, str]], bool],
    *,
    scan: int | None = None,
) -> list[DeadLetter]:
    out: list[DeadLetter] = []
    seen = 0
    async with contextlib.aclosing(stored_messages(js, stream, subject)) as messages:
        async for msg in messages:
            seen += 1
            headers, key = split_key(msg.headers)
            if keep(headers):
                out.append(DeadLetter(topic, msg.data, headers, key))
            if len(out) >= limit or (scan is not None and seen >= scan):
                break
    return out


async def stored_messages(
    js: JetStreamContext, stream: str, subject: str
) -> AsyncGenerator[Msg, None]:
    """Every message of ``subject`` in ``stream``, oldest first, through a short-lived consumer
    that acknowledges nothing (deleted afterwards, or expiring by itself)."""
    try:
        info = await js.add_consumer(
            stream,
            ConsumerConfig(
                filter_subject=subject,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )
    except nats.js.errors.NotFoundError:
        return  # no dead-letter stream yet: no dead letters
    try:
        if not info.num_pending:
            return
        sub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
        try:
            while True:
                try:
                    msgs = await sub.fetch(_PAGE, timeout=_READ_TIMEOUT)
                except nats.errors.TimeoutError:
                    return
                for msg in msgs:
                    yield msg
                if not msgs or msgs[-1].metadata.num_pending == 0:
                    return
        finally:
            await sub.unsubscribe()
    finally:
        await _delete_consumer(js, stream, info.name)


def split_key(raw: dict[str, str] | None) -> tuple[dict[str, str], bytes | None]:
    """A dead letter's headers without the key headers, and the key they carried."""
    headers = dict(raw or {})
    try:
        key = decode_key(headers)
    except ValueError:
        key = None
    headers.pop(KEY_HEADER, None)
    headers.pop(KEY_B64_HEADER, None)
    return headers, key


async def _delete_consumer(js: JetStreamContext, stream: str, name: str) -> None:
    # If this fails the consumer expires by itself (inactive_threshold).
    with contextlib.suppress(nats.errors.Error):
        await js.delete_consumer(stream, name)
