"""glibc malloc tuning: blocks of 16 KB and more get their own mapping, and free pages inside the heap go back."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Run in a fresh interpreter: the setting lasts for the whole process, and this test process must keep its own.
PROBE = """
import ctypes
from opsmgr.allocator import map_large_blocks

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


RELEASE_PROBE = """
import ctypes
from opsmgr.allocator import release_free_memory

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20

# 200 MiB of 2 KB blocks written to (so resident), then every block freed but one in 64: the heap cannot shrink
# from its top, so the holes stay resident until someone hands their pages back.
blocks = [libc.malloc(2048) for _ in range(100_000)]
for block in blocks:
    ctypes.memset(block, 1, 2048)
kept = blocks[::64]
for index, block in enumerate(blocks):
    if index % 64:
        libc.free(block)
holes = resident_mib()
released = release_free_memory()
print(round(holes), released, round(resident_mib()))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_free_pages_between_kept_blocks_go_back_to_the_kernel() -> None:
    reply = subprocess.run([sys.executable, "-c", RELEASE_PROBE], capture_output=True, text=True, check=True,
                           timeout=60)
    holes, released, after = reply.stdout.split()
    assert released == "True"
    assert int(holes) - int(after) > 100, f"{holes} MiB resident before, {after} MiB after releasing"
