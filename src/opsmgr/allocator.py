"""glibc malloc settings for our long-running processes, each chosen by a benchmark; nothing elsewhere (musl).

**Server: large blocks mapped on their own** (`map_large_blocks`). Each agent connection keeps two long-lived
blocks of 17 KB (the TLS library's BIO buffers), and batch handling makes short-lived blocks of tens of KB and more
(asyncpg's COPY buffers, the event loop's 256 KB socket reads) between such long-lived ones.
glibc serves blocks below its mmap threshold (128 KB, raised up to 32 MB each time a larger mapped block is freed)
from its heaps, and a freed block among live ones is reused only by a request that fits: in bench_fleet the main
heap grew by 6 to 8 KB per agent within two minutes, and went on growing. With a threshold of 16 KB,
blocks of that size and more that the heap has no free room for get a mapping of their own, given back whole when
freed: the main heap stays flat, and a connection's TLS buffers cost only the pages it touches. bench_fleet, 120 s
window: 104.6 -> 99.4 KB per agent at 3,000 agents, 105.1 -> 99.3 to 100.0 at 10,000. The price is a map and an
unmap per such short-lived block: bench_server_ingest 8.0 -> 8.3 us of server CPU per item, items/s unchanged.
32 KB misses the 17 KB buffers and changed nothing; 8 KB cut 3 KB more per agent but cost 9.3 us per item (every
socket read's 8 KB buffer gets mapped and unmapped).

**Agent: one arena** (`one_malloc_arena`). glibc gives each thread that allocates an arena of its own (up to 8 per
core), and each arena keeps the memory freed into it. The agent's few threads (gRPC's, the queue's SQLite thread,
discovery and counter workers) allocate little and seldom at the same time, so sharing one costs no measurable
CPU, while the arenas they each keep cost the agent 1.6 to 4 MB of RSS in bench_agent_collection.

**Operator: free pages handed back** (`release_free_memory`). glibc gives memory back to the kernel only from the
top of a heap; free chunks in the middle stay resident until `malloc_trim` returns their whole pages. A burst of new
Agents leaves such holes between what the operator keeps (index entries, kopf's per-object memories), so it is
called every few seconds there.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h.
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8

MMAP_THRESHOLD_BYTES = 16 * 1024
# Each mapped block is one kernel memory map, and a process may have 65,530 (vm.max_map_count): 2 per agent
# connection, so 32,768 covers 10,000 agents with room for the rest; blocks beyond come from the heaps again.
MMAP_MAX_BLOCKS = 32_768


def map_large_blocks(threshold: int = MMAP_THRESHOLD_BYTES, max_blocks: int = MMAP_MAX_BLOCKS) -> bool:
    """Serve blocks of `threshold` bytes and more with their own mmap (glibc only); True when set."""
    mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None:
        return False
    applied = bool(mallopt(M_MMAP_MAX, max_blocks) == 1 and mallopt(M_MMAP_THRESHOLD, threshold) == 1)
    if not applied:
        log.warning("malloc tuning not applied", extra={"fields": {"mmap_threshold": threshold}})
    return applied


def one_malloc_arena() -> bool:
    """Let every thread of this process share one glibc malloc arena; call it before any thread starts."""
    mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int])
    return mallopt is not None and mallopt(M_ARENA_MAX, 1) == 1


def glibc_malloc() -> bool:
    """Whether this process allocates with glibc's malloc, which the functions here tune."""
    return _glibc("malloc_trim", [ctypes.c_size_t]) is not None


def release_free_memory() -> bool:
    """Give the kernel back the free pages inside glibc's heaps (`malloc_trim(0)`); True when some were."""
    trim = _glibc("malloc_trim", [ctypes.c_size_t])
    return trim is not None and trim(0) == 1


def _glibc(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """One of glibc's malloc functions, or None under another C library (which keeps its own behaviour)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        function = getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError, ValueError):
        return None  # musl has neither the confstr name nor these functions
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return cast("Callable[..., int]", function)
