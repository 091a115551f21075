"""NATS protocol lines from a raw socket, for tests that play a hostile publisher: subjects,
header blocks and status lines no client library would let through."""

from __future__ import annotations

import asyncio

__all__ = ["RawNATS", "hpub", "pub", "raw_publish"]


def pub(subject: bytes, body: bytes) -> bytes:
    return b"PUB %s %d\r\n%s\r\n" % (subject, len(body), body)


def hpub(subject: bytes, header_block: bytes, body: bytes) -> bytes:
    size = len(header_block)
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (subject, size, size + len(body), header_block, body)


class RawNATS:
    """One raw connection: ``async with RawNATS(port) as raw: await raw.send(pub(...))``."""

    def __init__(self, port: int = 4222, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawNATS:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        await self._reader.readline()  # INFO
        self._writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        await self.send()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._writer is not None
        self._writer.close()
        await self._writer.wait_closed()

    async def send(self, *publishes: bytes) -> None:
        """Send ``publishes``, then PING; return at the PONG (the server processed them all).
        Fails if the server answered with an error."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"".join(publishes) + b"PING\r\n")
        await self._writer.drain()
        reply = b""
        async with asyncio.timeout(10):
            while not reply.endswith(b"PONG\r\n"):
                line = await self._reader.readline()
                if not line:
                    raise AssertionError(f"the server closed the connection: {reply!r}")
                reply += line
        assert b"-ERR" not in reply, reply


async def raw_publish(publishes: list[bytes], port: int = 4222) -> None:
    """Send ``publishes`` on a raw connection of their own."""
    async with RawNATS(port) as raw:
        await raw.send(*publishes)
