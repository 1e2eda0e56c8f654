"""The server's malloc tuning: blocks of 16 KB and more get their own mapping, given back whole when freed."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Run in a fresh interpreter: the setting lasts for the whole process, and this test process must keep its own.
PROBE = """
import ctypes
from opsmgr.server.allocator import map_large_blocks

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def mapped_of_200(size):
    # how many of 200 blocks held at once (more than the heap has free) got their own mapping
    before = libc.mallinfo2().hblks
    blocks = [libc.malloc(size) for _ in range(200)]
    mapped = libc.mallinfo2().hblks - before
    for block in blocks:
        libc.free(block)
    return mapped

print(mapped_of_200(17 * 1024), map_large_blocks(), mapped_of_200(17 * 1024) >= 150, mapped_of_200(8 * 1024))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_17_kb_block_is_mapped_on_its_own_once_tuned_and_small_ones_stay_in_the_heap() -> None:
    reply = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    assert reply.stdout.split() == ["0", "True", "True", "0"]
