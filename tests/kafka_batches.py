"""Kafka record batches no Kafka client would write, for tests that play a hostile publisher:
header names that are not UTF-8, and batches in a compression codec the consumer may not have.

aiokafka builds the batch; its bytes are then patched (placeholder header names swapped for the
raw bytes wanted, the records compressed with another codec) and its length and CRC fixed, so
the broker stores it as any other batch.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from typing import Literal

from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBase
from aiokafka.record.util import calc_crc32c

__all__ = ["Codec", "send_batch", "snappy_xerial"]

#: ``None``: uncompressed; ``snappy`` is written without a snappy library (literals only).
Codec = Literal["gzip", "snappy"] | None

#: Where the records start in a v2 batch (after the 61-byte batch header).
_RECORDS_AT = 61
_ATTRIBUTES_AT = DefaultRecordBase.ATTRIBUTES_OFFSET
_CODEC_IDS = {"gzip": 1, "snappy": 2}
_XERIAL_MAGIC = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)

Record = tuple[bytes, Sequence[tuple[bytes, bytes]]]


async def send_batch(
    servers: str,
    topic: str,
    records: Sequence[Record],
    partition: int = 0,
    compression: Codec = None,
) -> None:
    """Write ``records`` (value, [(raw header name, value)]) as one batch to ``topic``.

    Header names of at most 32 bytes may be any bytes; ``compression`` is applied to the
    records after the names are in place."""
    producer = AIOKafkaProducer(
        bootstrap_servers=servers,
        enable_idempotence=False,
        compression_type="gzip" if compression == "gzip" else None,
    )
    await producer.start()
    try:
        batch = producer.create_batch()
        swaps: list[tuple[bytes, bytes]] = []
        for value, headers in records:
            named = []
            for name, header_value in headers:
                placeholder = uuid.uuid4().hex[: len(name)].encode() if len(name) <= 32 else name
                swaps.append((placeholder, name))
                named.append((placeholder.decode(), header_value))
            batch.append(timestamp=None, key=None, value=value, headers=named)
        build = batch._build

        def patched() -> bytearray:
            buffer = build()
            body = bytearray(buffer[_RECORDS_AT:])
            if compression == "gzip":
                body = bytearray(_gzip_decode(bytes(body)))
            for placeholder, name in swaps:
                at = body.find(placeholder)
                body[at : at + len(name)] = name
            if compression == "gzip":
                body = bytearray(_gzip_encode(bytes(body)))
            elif compression == "snappy":
                body = bytearray(snappy_xerial(bytes(body)))
                (attributes,) = struct.unpack_from(">h", buffer, _ATTRIBUTES_AT)
                struct.pack_into(">h", buffer, _ATTRIBUTES_AT, attributes | _CODEC_IDS["snappy"])
            buffer[_RECORDS_AT:] = body
            struct.pack_into(">i", buffer, 8, len(buffer) - 12)
            crc = calc_crc32c(bytes(buffer[_ATTRIBUTES_AT:]))
            struct.pack_into(">I", buffer, DefaultRecordBase.CRC_OFFSET, crc)
            return buffer

        batch._build = patched  # type: ignore[method-assign]
        batch.close()
        await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


def _gzip_decode(data: bytes) -> bytes:
    from aiokafka.codec import gzip_decode

    return bytes(gzip_decode(data))


def _gzip_encode(data: bytes) -> bytes:
    from aiokafka.codec import gzip_encode

    return bytes(gzip_encode(data))


def snappy_xerial(data: bytes) -> bytes:
    """``data`` snappy-compressed in the xerial framing Kafka's Java client writes, using only
    literal elements (valid snappy that any reader decodes; no snappy library needed here)."""
    out = bytearray(_XERIAL_MAGIC)
    for start in range(0, max(len(data), 1), 32 * 1024):
        block = _snappy_literals(data[start : start + 32 * 1024])
        out += struct.pack(">i", len(block)) + block
    return bytes(out)


def _snappy_literals(chunk: bytes) -> bytes:
    out = bytearray(_uvarint(len(chunk)))
    for start in range(0, len(chunk), 65536):
        piece = chunk[start : start + 65536]
        size = len(piece) - 1
        if size < 60:
            out.append(size << 2)
        elif size < 256:
            out += bytes((60 << 2, size))
        else:
            out += bytes((61 << 2,)) + struct.pack("<H", size)
        out += piece
    return bytes(out)


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
