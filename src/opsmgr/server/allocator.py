"""Keep glibc's malloc from holding freed memory in a server with thousands of long-lived agent connections.

Each agent connection keeps two long-lived blocks of 17 KB (the TLS library's BIO buffers), and batch handling
makes short-lived blocks of tens of KB and more (asyncpg's COPY buffers, the event loop's 256 KB socket reads)
between such long-lived ones.
glibc serves blocks below its mmap threshold (128 KB, raised up to 32 MB each time a larger mapped block is freed)
from its heaps, and a freed block among live ones is reused only by a request that fits: in bench_fleet the main
heap grew by 6 to 8 KB per agent within two minutes, and went on growing. With a threshold of 16 KB,
blocks of that size and more that the heap has no free room for get a mapping of their own, given back whole when
freed: the main heap stays flat, and a connection's TLS buffers cost only the pages it touches. bench_fleet, 120 s
window: 104.6 -> 99.4 KB per agent at 3,000 agents, 105.1 -> 99.3 to 100.0 at 10,000. The price is a map and an
unmap per such short-lived block: bench_server_ingest 8.0 -> 8.3 us of server CPU per item, items/s unchanged.
32 KB misses the 17 KB buffers and changed nothing; 8 KB cut 3 KB more per agent but cost 9.3 us per item (every
socket read's 8 KB buffer gets mapped and unmapped).
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h.
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

MMAP_THRESHOLD_BYTES = 16 * 1024
# Each mapped block is one kernel memory map, and a process may have 65,530 (vm.max_map_count): 2 per agent
# connection, so 32,768 covers 10,000 agents with room for the rest; blocks beyond come from the heaps again.
MMAP_MAX_BLOCKS = 32_768


def map_large_blocks(threshold: int = MMAP_THRESHOLD_BYTES, max_blocks: int = MMAP_MAX_BLOCKS) -> bool:
    """Serve blocks of `threshold` bytes and more with their own mmap (glibc only); True when set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False  # musl and others have no mallopt; their allocators are left as they are
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = bool(mallopt(M_MMAP_MAX, max_blocks) == 1 and mallopt(M_MMAP_THRESHOLD, threshold) == 1)
    if not applied:
        log.warning("malloc tuning not applied", extra={"fields": {"mmap_threshold": threshold}})
    return applied
