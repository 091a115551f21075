"""A lenient reader of Kafka record batches. Pure (no I/O).

aiokafka decodes every header name as UTF-8 while it unpacks a fetch, so one record with a
header name that is not UTF-8 makes the whole fetch fail, again and again. This module reads the
same bytes (the v2 record batch format of the Kafka protocol, KIP-98) without decoding anything:
header names stay ``bytes``, and a batch that cannot be read at all (a CRC mismatch, a codec
that is not installed, a truncated record) is reported as such with the offsets it covers, so
the consumer can skip it loudly instead of stopping.

It is only used on that failure path, for the partition that failed; the fast path stays
aiokafka's own (C) parser.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["BadBatch", "RawRecord", "read_batches"]

# baseOffset, batchLength, partitionLeaderEpoch, magic
_LOG_HEADER = struct.Struct(">qiib")
# crc, attributes, lastOffsetDelta, baseTimestamp, maxTimestamp, producerId, producerEpoch,
# baseSequence, record count
_V2_HEADER = struct.Struct(">IhiqqqhiI")
_CRC_START = _LOG_HEADER.size + 4  # the CRC covers everything after itself
_COMPRESSION = 0x07
_TRANSACTIONAL = 0x10
_CONTROL = 0x20
_ABORT_MARKER = 0


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record, nothing decoded."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[bytes, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class BadBatch:
    """A batch that could not be read; its records are the offsets ``first .. next - 1``."""

    first: int
    next: int
    reason: str


class _Truncated(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag-encoded varint (as Kafka writes them) at ``pos``: ``(value, new pos)``."""
    shift = result = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Truncated("varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _bytes(data: bytes, pos: int) -> tuple[bytes | None, int]:
    length, pos = _varint(data, pos)
    if length < 0:
        return None, pos
    end = pos + length
    if end > len(data):
        raise _Truncated("field")
    return data[pos:end], end


def _records(body: bytes, count: int, base_offset: int, base_ts: int) -> list[RawRecord]:
    out: list[RawRecord] = []
    pos = 0
    for _ in range(count):
        length, pos = _varint(body, pos)
        end = pos + length
        if length < 0 or end > len(body):
            raise _Truncated("record")
        pos += 1  # attributes (unused)
        ts_delta, pos = _varint(body, pos)
        offset_delta, pos = _varint(body, pos)
        key, pos = _bytes(body, pos)
        value, pos = _bytes(body, pos)
        header_count, pos = _varint(body, pos)
        headers = []
        for _ in range(max(header_count, 0)):
            name, pos = _bytes(body, pos)
            header_value, pos = _bytes(body, pos)
            headers.append((name or b"", header_value))
        if pos != end:
            raise _Truncated("record length")
        out.append(
            RawRecord(base_offset + offset_delta, base_ts + ts_delta, key, value, tuple(headers))
        )
    return out


def _decompress(codec: int, data: bytes) -> bytes:
    from aiokafka import codec as codecs

    if codec == 1:
        return bytes(codecs.gzip_decode(data))
    if codec == 2:
        return bytes(codecs.snappy_decode(data))
    if codec == 3:
        return bytes(codecs.lz4_decode(data))
    if codec == 4:
        return bytes(codecs.zstd_decode(data))
    raise ValueError(f"unknown compression codec {codec}")


def read_batches(
    data: bytes,
    *,
    aborted: tuple[tuple[int, int], ...] = (),
    read_committed: bool = False,
    check_crc: bool = True,
) -> Iterator[RawRecord | BadBatch]:
    """The records of the complete batches in ``data`` (a fetch response's record set), in
    offset order; a batch that cannot be read becomes one :class:`BadBatch`.

    Control batches are skipped, and so are aborted transactional batches when
    ``read_committed`` (``aborted`` lists ``(producer id, first offset)`` as the fetch response
    gives them). Legacy (v0/v1) message sets are read with aiokafka's own reader: they carry no
    headers, so aiokafka can always decode them.
    """
    pending = sorted(aborted, key=lambda a: a[1])
    aborting: set[int] = set()
    pos = 0
    while pos + _LOG_HEADER.size <= len(data):
        base_offset, length, _epoch, magic = _LOG_HEADER.unpack_from(data, pos)
        end = pos + 12 + length
        if length < 0 or end > len(data):
            return  # a partial batch at the end of a fetch: the next fetch has it whole
        batch = data[pos:end]
        pos = end
        if magic < 2:
            yield from _legacy(batch, magic, base_offset)
            continue
        if len(batch) < _LOG_HEADER.size + _V2_HEADER.size:
            yield BadBatch(base_offset, base_offset + 1, "truncated batch header")
            continue
        crc, attributes, last_delta, base_ts, _max_ts, producer_id, _pe, _seq, count = (
            _V2_HEADER.unpack_from(batch, _LOG_HEADER.size)
        )
        next_offset = base_offset + last_delta + 1
        if check_crc:
            from aiokafka.record.util import calc_crc32c

            if calc_crc32c(batch[_CRC_START:]) != crc:
                yield BadBatch(base_offset, next_offset, "CRC mismatch")
                continue
        while read_committed and pending and pending[0][1] <= base_offset:
            aborting.add(pending.pop(0)[0])
        body = batch[_LOG_HEADER.size + _V2_HEADER.size :]
        if attributes & _CONTROL:
            if read_committed and _is_abort_marker(body):
                aborting.discard(producer_id)
            continue
        if read_committed and attributes & _TRANSACTIONAL and producer_id in aborting:
            continue
        try:
            codec = attributes & _COMPRESSION
            if codec:
                body = _decompress(codec, body)
            records = _records(body, count, base_offset, base_ts)
        except Exception as exc:  # a codec not installed, corrupt data, a truncated record
            yield BadBatch(base_offset, next_offset, f"{type(exc).__name__}: {exc}")
            continue
        yield from records


def _is_abort_marker(body: bytes) -> bool:
    try:
        [record] = _records(body, 1, 0, 0)
    except Exception:
        return False
    key = record.key or b""
    return len(key) >= 4 and struct.unpack_from(">h", key, 2)[0] == _ABORT_MARKER


def _legacy(batch: bytes, magic: int, base_offset: int) -> Iterator[RawRecord | BadBatch]:
    from aiokafka.record.legacy_records import LegacyRecordBatch

    try:
        records = [
            RawRecord(r.offset, r.timestamp or -1, r.key, r.value, ())
            for r in LegacyRecordBatch(bytearray(batch), magic)
        ]
    except Exception as exc:
        yield BadBatch(base_offset, base_offset + 1, f"{type(exc).__name__}: {exc}")
        return
    yield from records
