"""The record files a consumer process appends handled sequence numbers to (read back by
:class:`tests.faults.harness.Records`). Imports nothing of Dispytch, so any version can use it."""

from __future__ import annotations

import os


class RecordFile:
    """Append-only file of sequence numbers, one per line; one ``write`` per line."""

    def __init__(self, path: str, durable: bool) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._durable = durable

    def add(self, seq: int) -> None:
        os.write(self._fd, b"%d\n" % seq)
        if self._durable:
            os.fsync(self._fd)
