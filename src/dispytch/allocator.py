"""Socket reads without a memory mapping each: priming glibc's allocator once per process.

asyncio reads a socket into a fresh buffer of 256 KiB (``transport.max_size``) and shrinks it
to what arrived. glibc's ``malloc`` serves blocks of 128 KiB or more with a memory mapping of
their own (``mmap``), so every read of a few hundred bytes costs an ``mmap``, an ``mremap`` and
an ``munmap``, and page faults: about a quarter of the client CPU of a publish confirmed by a
round trip, measured on Linux with CPython 3.11 (see bench/NOTES.md). glibc raises that
threshold by itself when a mapped block is freed whole, never when it was shrunk first, which is
what every read does.

:func:`prime` frees one block larger than the read buffer, whole: the threshold rises above the
read buffer's size, and later reads are served from the heap, without a system call. The heap
keeps up to twice that block unreturned to the system (about 1 MiB). Elsewhere than glibc it
does nothing worse than allocate and free the block once.
"""

from __future__ import annotations

__all__ = ["prime"]

#: More than asyncio's read buffer (256 KiB), below glibc's highest dynamic threshold (32 MiB).
_BLOCK = 512 * 1024

_primed = False


def prime() -> None:
    """Raise glibc's mmap threshold above asyncio's read buffer; once per process."""
    global _primed
    if _primed:
        return
    _primed = True
    block = bytearray(_BLOCK)  # one mapping of its own, freed whole below
    del block
