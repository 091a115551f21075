"""allocator.prime: socket reads the way asyncio makes them no longer map memory each."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc is what prime() tunes",
)

# In a fresh interpreter (the test process's heap has a history of its own): the page faults
# of 1,000 reads of 200 bytes into asyncio's 256 KiB read buffer.
_READS = """
import resource, socket, sys
if sys.argv[1] == "prime":
    from dispytch import allocator
    allocator.prime()
a, b = socket.socketpair()
def reads(n):
    for _ in range(n):
        a.send(b"x" * 200)
        b.recv(256 * 1024)
reads(10)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
reads(1000)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _READS, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_reads_map_memory_each_time_unless_primed() -> None:
    if _faults("plain") < 1000:  # a fresh mapping, touched, per read
        pytest.skip("this malloc does not map memory for each read: nothing to prime")
    assert _faults("prime") < 100  # served from the heap
