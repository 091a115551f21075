"""Every use of aiormq's and pamqp's private state, in one place.

Verified on **aiormq 7.2.4** and **pamqp 4.0.1**.

pamqp decodes every AMQP short string (routing key, exchange, message id...) and every header
name as UTF-8, and every timestamp as a ``datetime``. A publisher can put any bytes there: one
such delivery makes ``pamqp.frame.unmarshal`` raise inside aiormq's frame reader, the
connection dies, aio-pika reconnects, the broker delivers the same message again, and so on
every 5 seconds, forever, with nothing after it handled.

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
import struct
import weakref
from typing import Any

import pamqp.frame
from pamqp import commands, decode
from pamqp.header import ContentHeader

__all__ = ["install", "lenient_frame", "protect", "undecodable"]

VERIFIED_VERSIONS = {"aiormq": ("7.2.4",), "pamqp": ("4.0.1",)}

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
    task = getattr(connection, "_reader_task", None)
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
