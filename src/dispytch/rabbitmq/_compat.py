"""Every use of aiormq's and pamqp's internals, in one place.

Verified on **aiormq 7.2.4** and **pamqp 4.0.1** (with aio-pika 10.2.1). Every read of a
client's internal state goes through :func:`private`; the fallback tests
(``tests/backends/test_compat_fallbacks.py``, ``pytest --compat-fallbacks``) replace it with
one that finds nothing, which runs every fallback below against the live broker. CI also runs
the RabbitMQ tests against the newest aio-pika, aiormq and pamqp (``.ci/run``).

Two things live here:

* **Surviving undecodable frames** (:func:`protect`, below).
* **Publishing a batch in few writes** (:class:`PublishLedger`): the channel's publish
  bookkeeping as ``Channel.basic_publish`` keeps it. Fallback: ``None``, and the producer
  publishes message by message through aiormq's own ``basic_publish``.
* **Hand-built publish frames** (:mod:`dispytch.rabbitmq.frames`, not here: pure AMQP 0-9-1
  marshalling that reads no client state); ``tests/unit/test_rabbitmq_frames.py`` checks them
  byte for byte against pamqp's, on the installed and on the newest pamqp.
* **Failover between cluster nodes** (:class:`FailoverConnection`, at the end): each reconnect
  attempt of aio-pika's ``RobustConnection`` (10.2.1) starts by setting ``self.transport =
  None`` and then connects to ``self.url``; that assignment is the moment to pick the next
  node, and ``_on_connected`` says the first connection succeeded. Fallback
  (:func:`failover_supported` false): a plain ``RobustConnection``, whose reconnects stay on
  the node they were on (the behaviour of a single-host URL);
  ``tests/unit/test_cluster_config.py`` fails if a release breaks the verified path.

**Undecodable frames.** pamqp decodes every AMQP short string (routing key, exchange, message
id...) and every header name as UTF-8, and every timestamp as a ``datetime``. A publisher can
put any bytes there: one such delivery makes ``pamqp.frame.unmarshal`` raise inside aiormq's
frame reader, the connection dies, aio-pika reconnects, the broker delivers the same message
again, and so on every 5 seconds, forever, with nothing after it handled.

:func:`protect` makes the frame reader of one aiormq connection lenient. A frame that pamqp
cannot unmarshal is then decoded again by :func:`lenient_frame`: strings that are not UTF-8 are
kept with ``surrogateescape`` (the raw bytes are recoverable), a timestamp out of range becomes
``None``, and the frame is returned as an instance of a subclass of pamqp's class carrying
``dispytch_undecodable`` (what could not be decoded); :func:`undecodable` finds it, and the
consumer dead-letters that delivery instead of handing it to a handler. Frames that decode
fine are untouched, and connections not protected behave exactly as before.

How: aiormq calls ``pamqp.frame.unmarshal`` through the module attribute, so :func:`install`
wraps it once. The wrapper only acts when the original raised *and* the running task is the
reader task of a protected connection (``Connection._reader_task``, an aiormq
``TaskWrapper`` around the task). Fallbacks: when aiormq
looks different (no ``_reader_task``), :func:`protect` returns ``False`` and the connection
is as fragile as plain aiormq; a frame the lenient decoder cannot read either is left to fail
as before.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import struct
import weakref
from collections.abc import Sequence
from typing import Any

import pamqp.frame
from aio_pika import RobustConnection
from aiormq.abc import ChannelFrame
from pamqp import commands, decode
from pamqp.header import ContentHeader
from yarl import URL

__all__ = [
    "FailoverConnection",
    "PublishLedger",
    "failover_supported",
    "install",
    "ledger",
    "lenient_frame",
    "private",
    "protect",
    "undecodable",
]

VERIFIED_VERSIONS = {"aiormq": ("7.2.4",), "pamqp": ("4.0.1",), "aio-pika": ("10.2.1",)}


def private(obj: Any, name: str) -> Any:
    """``obj``'s internal attribute ``name``, ``None`` when it has none.

    Every read of aiormq's internal state in this module goes through here; the fallback
    tests replace it with one that finds nothing, which runs every fallback.
    """
    return getattr(obj, name, None)


logger = logging.getLogger("dispytch.rabbitmq")

_FRAME_END = 0xCE
_protected: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
_original_unmarshal = pamqp.frame.unmarshal
_lenient_classes: dict[Any, Any] = {}
_lenient_types: set[Any] = set()


class _Unreadable(Exception):
    """The lenient decoder cannot read this either."""


class LenientContentHeader(ContentHeader):
    """A content header decoded leniently; ``dispytch_undecodable`` says what could not be."""

    dispytch_undecodable: tuple[str, ...] = ()


_lenient_types.add(LenientContentHeader)


def _lenient_class(cls: Any) -> Any:
    found = _lenient_classes.get(cls)
    if found is None:
        found = _lenient_classes[cls] = type(
            f"Lenient{cls.__name__}", (cls,), {"dispytch_undecodable": ()}
        )
        _lenient_types.add(found)
    return found


def _tolerant_unmarshal(data: bytes) -> tuple[int, int, Any]:
    try:
        decoded: tuple[int, int, Any] = _original_unmarshal(data)
    except Exception:
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        if task is None or task not in _protected:
            raise
        lenient = lenient_frame(data)
        if lenient is None:
            raise
        return lenient
    return decoded


def install() -> None:
    """Wrap ``pamqp.frame.unmarshal`` (once); it changes nothing for unprotected connections."""
    if pamqp.frame.unmarshal is not _tolerant_unmarshal:
        pamqp.frame.unmarshal = _tolerant_unmarshal  # type: ignore[assignment]


def protect(connection: Any) -> bool:
    """Make the frame reader of aiormq ``connection`` lenient (see the module docstring)."""
    task = private(connection, "_reader_task")
    task = getattr(task, "task", task)  # aiormq wraps its tasks in a TaskWrapper
    if not isinstance(task, asyncio.Task):
        return False
    install()
    _protected.add(task)
    return True


def undecodable(frame: Any) -> tuple[str, ...]:
    """What could not be decoded in ``frame`` (a method frame or content header); ``()`` for
    every frame pamqp decoded itself."""
    if type(frame) in _lenient_types:
        marks: tuple[str, ...] = frame.dispytch_undecodable
        return marks
    return ()


# -- the lenient decoder -----------------------------------------------------------------------


def _shortstr(data: bytes, pos: int, what: str, marks: list[str]) -> tuple[str, int]:
    if pos >= len(data):
        raise _Unreadable("short string")
    end = pos + 1 + data[pos]
    if end > len(data):
        raise _Unreadable("short string")
    raw = data[pos + 1 : end]
    try:
        return raw.decode("utf-8"), end
    except UnicodeDecodeError:
        marks.append(what)
        return raw.decode("utf-8", "surrogateescape"), end


def _timestamp(data: bytes, pos: int, what: str, marks: list[str]) -> tuple[Any, int]:
    if pos + 8 > len(data):
        raise _Unreadable("timestamp")
    (value,) = struct.unpack_from(">Q", data, pos)
    seconds = value / 1000.0 if value > 0xFFFFFFFF else value
    try:
        return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC), pos + 8
    except (ValueError, OverflowError, OSError):
        marks.append(what)
        return None, pos + 8


def _sized(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """Where the content of a length-prefixed table or array starts and ends."""
    if pos + 4 > len(data):
        raise _Unreadable(what)
    (length,) = struct.unpack_from(">I", data, pos)
    end = pos + 4 + length
    if end > len(data):
        raise _Unreadable(what)
    return pos + 4, end


def _table(data: bytes, pos: int, marks: list[str]) -> tuple[dict[str, Any], int]:
    pos, end = _sized(data, pos, "table")
    out: dict[str, Any] = {}
    try:
        while pos < end:
            key, pos = _shortstr(data, pos, "header-name", marks)
            out[key], pos = _field(data, pos, end, marks)
    except _Unreadable:
        marks.append("header-value")  # what follows cannot be read: keep what was
    return out, end


def _array(data: bytes, pos: int, marks: list[str]) -> tuple[list[Any], int]:
    pos, end = _sized(data, pos, "array")
    out: list[Any] = []
    try:
        while pos < end:
            value, pos = _field(data, pos, end, marks)
            out.append(value)
    except _Unreadable:
        marks.append("header-value")
    return out, end


def _field(data: bytes, pos: int, end: int, marks: list[str]) -> tuple[Any, int]:
    """One typed value of a field table or array."""
    if pos >= end:
        raise _Unreadable("field")
    kind = data[pos : pos + 1]
    pos += 1
    if kind == b"F":
        return _table(data, pos, marks)
    if kind == b"A":
        return _array(data, pos, marks)
    if kind == b"T":
        return _timestamp(data, pos, "header-value", marks)
    decoder = decode.TABLE_MAPPING.get(kind)
    if decoder is None:
        raise _Unreadable(f"field type {kind!r}")
    try:
        used, value = decoder(data[pos:end])
    except Exception as exc:
        raise _Unreadable("field") from exc
    return value, pos + used


def _value(data: bytes, pos: int, kind: str, what: str, marks: list[str]) -> tuple[Any, int]:
    if kind == "shortstr":
        return _shortstr(data, pos, what, marks)
    if kind == "table":
        return _table(data, pos, marks)
    if kind == "timestamp":
        return _timestamp(data, pos, what, marks)
    try:
        used, value = decode.by_type(data[pos:], kind)
    except Exception as exc:
        raise _Unreadable(kind) from exc
    return value, pos + used


def _method(payload: bytes, marks: list[str]) -> Any:
    if len(payload) < 4:
        raise _Unreadable("method")
    (index,) = struct.unpack_from(">I", payload)
    cls: Any = commands.INDEX_MAPPING.get(index)
    if cls is None:
        raise _Unreadable("method")
    lenient = _lenient_class(cls)
    frame = lenient.__new__(lenient)
    pos, bit = 4, -1
    for name in cls.__slots__:
        kind = cls.amqp_type(name)
        if kind == "bit":
            bit += 1
            if bit == 8:
                pos, bit = pos + 1, 0
            if pos >= len(payload):
                raise _Unreadable("bit")
            setattr(frame, name, bool(payload[pos] & (1 << bit)))
            continue
        if bit >= 0:
            pos, bit = pos + 1, -1
        value, pos = _value(payload, pos, kind, name.replace("_", "-"), marks)
        setattr(frame, name, value)
    return frame


def _header(payload: bytes, marks: list[str]) -> LenientContentHeader:
    if len(payload) < 14:
        raise _Unreadable("content header")
    class_id, weight, body_size = struct.unpack_from(">HHQ", payload)
    pos, flags, word = 12, 0, 0
    while True:
        if pos + 2 > len(payload):
            raise _Unreadable("flags")
        (partial,) = struct.unpack_from(">H", payload, pos)
        pos += 2
        flags |= partial << (word * 16)
        word += 1
        if not partial & 1:
            break
    cls = commands.Basic.Properties
    properties = cls.__new__(cls)
    for name in cls.__slots__:
        value = None
        if flags & cls.flags[name]:
            value, pos = _value(payload, pos, cls.amqp_type(name), name.replace("_", "-"), marks)
        setattr(properties, name, value)
    header = LenientContentHeader(weight, body_size, properties)
    header.class_id = class_id
    return header


def lenient_frame(data: bytes) -> tuple[int, int, Any] | None:
    """``(bytes used, channel, frame)`` like ``pamqp.frame.unmarshal``, for a method or content
    header frame pamqp cannot unmarshal; ``None`` when this cannot read it either, or finds
    nothing undecodable in it (then the failure was something else)."""
    if len(data) < 8:
        return None
    frame_type, channel, size = struct.unpack_from(">BHI", data)
    end = 7 + size
    if len(data) < end + 1 or data[end] != _FRAME_END:
        return None
    payload = data[7:end]
    marks: list[str] = []
    frame: Any
    try:
        if frame_type == 1:
            frame = _method(payload, marks)
        elif frame_type == 2:
            frame = _header(payload, marks)
        else:
            return None
    except _Unreadable:
        return None
    if not marks:
        return None
    frame.dispytch_undecodable = tuple(dict.fromkeys(marks))
    return end + 1, channel, frame


# -- batched publishing ------------------------------------------------------------------------

#: What ``Channel.basic_publish`` (aiormq 7.2.4) keeps per publish with confirms on, besides
#: ``lock``: the last delivery tag, a future per tag that ``basic.ack``/``basic.nack`` settle,
#: and ``message_id`` -> tag for matching a ``basic.return``; frames go through ``write_queue``.
_LEDGER = (
    "lock",
    "delivery_tag",
    "confirmations",
    "message_id_delivery_tag",
    "write_queue",
    "max_content_size",
    "number",
    "create_future",
)
_ledger_types: dict[type, bool] = {}


class PublishLedger:
    """One aiormq channel's publish bookkeeping, used the way ``basic_publish`` uses it.

    Hold :attr:`lock` (the channel's) from :meth:`reserve` to :meth:`write`: the broker numbers
    the publishes it receives, so tags are taken next to the write and given back if the write
    does not happen.
    """

    __slots__ = ("channel", "lock", "max_body", "number")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.lock: asyncio.Lock = channel.lock
        self.number: int = channel.number
        self.max_body: int = channel.max_content_size

    @property
    def closed(self) -> bool:
        return bool(self.channel.is_closed)

    def future(self) -> asyncio.Future[Any]:
        """A future the channel rejects if it closes."""
        future: asyncio.Future[Any] = self.channel.create_future()
        return future

    def reserve(self, confirmations: list[tuple[Any, str]]) -> int:
        """Number ``(confirmation, message_id)`` pairs in order; return the first tag.

        ``confirmation`` stands where aiormq keeps a future per publish: aiormq calls its
        ``done``, ``cancelled``, ``set_result`` and ``set_exception``.
        """
        channel = self.channel
        first: int = channel.delivery_tag + 1
        pending, by_id = channel.confirmations, channel.message_id_delivery_tag
        for tag, (confirmation, message_id) in enumerate(confirmations, first):
            pending[tag] = confirmation
            by_id[message_id] = tag
        channel.delivery_tag += len(confirmations)
        return first

    def release(self, first: int, message_ids: list[str]) -> None:
        """Give back the tags :meth:`reserve` took (the frames were not written)."""
        channel = self.channel
        channel.delivery_tag -= len(message_ids)
        self.forget(first, message_ids, confirmations=True)

    def forget(self, first: int, message_ids: list[str], *, confirmations: bool = False) -> None:
        """Drop the ``message_id`` -> tag entries of these publishes (once confirmed: a
        ``basic.return`` comes before the confirm), and their confirmations if asked."""
        channel = self.channel
        by_id = channel.message_id_delivery_tag
        for tag, message_id in enumerate(message_ids, first):
            if confirmations:
                channel.confirmations.pop(tag, None)
            if by_id.get(message_id) == tag:  # not taken over by another publish since
                del by_id[message_id]

    async def write(self, frames: bytes) -> None:
        """Queue marshalled frames for the connection's writer."""
        await self.channel.write_queue.put(ChannelFrame(frames, should_close=False))


def ledger(channel: Any) -> PublishLedger | None:
    """The publish bookkeeping of an aiormq channel with publisher confirms; ``None`` when the
    channel does not have it (another aiormq, or confirms off): publish message by message.

    Checked once per channel class (the attributes are set in ``Channel.__init__``, so one
    instance tells for its class).
    """
    if not getattr(channel, "publisher_confirms", False):
        return None
    kind = type(channel)
    known = _ledger_types.get(kind)
    if known is None:
        known = _ledger_types[kind] = all(private(channel, n) is not None for n in _LEDGER)
        if not known:
            logger.warning(
                "this aiormq's channel lacks the publish bookkeeping Dispytch batches with "
                "(verified with aiormq 7.2.4); publishing message by message"
            )
    return PublishLedger(channel) if known else None


# -- failover between the nodes of a cluster ---------------------------------------------------


def failover_supported() -> bool:
    """Whether aio-pika's ``RobustConnection`` has the reconnect hooks
    :class:`FailoverConnection` relies on."""
    return (
        callable(private(RobustConnection, "_on_connected"))
        and isinstance(private(RobustConnection, "transport"), property) is False
    )


class FailoverConnection(RobustConnection):
    """A robust connection that reconnects to the next node of ``nodes`` on every attempt.

    Built by :func:`dispytch.rabbitmq.failover.connect`; ``nodes`` are single-host URLs, the
    first one is connected first.
    """

    def __init__(self, url: URL, *args: Any, nodes: Sequence[str] = (), **kwargs: Any) -> None:
        self._nodes = [URL(node) for node in nodes] or [URL(url)]
        self._node = 0
        self._rotate = False  # no node change before the first connection succeeded
        super().__init__(url, *args, **kwargs)

    # aio-pika assigns ``transport = None`` at the start of each reconnect attempt (and on
    # close): the next attempt goes to the next node.
    @property
    def transport(self) -> Any:
        return self.__dict__.get("_failover_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        closing = private(self, "_close_called")
        if value is None and self._rotate and not closing and len(self._nodes) > 1:
            self._node = (self._node + 1) % len(self._nodes)
            self.url = self._nodes[self._node].with_query(self.url.query)
            logger.info("RabbitMQ: reconnecting through node %s:%s", self.url.host, self.url.port)
        self.__dict__["_failover_transport"] = value

    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._rotate = True
