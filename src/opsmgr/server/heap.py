"""Keep CPython's cyclic garbage collector from stopping the server's event loop for long when many agents connect.

Every agent stream holds about 130 GC-tracked objects for as long as its agent stays connected (hours). At 10,000
agents a full (generation 2) collection walks about 1.5 million objects and stops the loop for 0.2 to 1.5 s, and
one runs every few tens of seconds as young survivors pile up: heartbeats that arrive meanwhile wait for it
(bench_fleet: p99 428 ms). Scanning long-lived objects again and again finds nothing, so `HeapFreezer` moves them
out of the collector's reach (`gc.freeze`) every few seconds; a collection then walks only what is newer than the
last freeze. Frozen objects are still freed by reference counting; only garbage cycles among them wait for the
next thaw (`gc.unfreeze` and a full collection), which pays one long pause every `thaw_seconds` instead of one
every minute, and keeps memory bounded.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreezePolicy:
    freeze_seconds: float = 5.0
    thaw_seconds: float = 900.0
    # The collector's thresholds (gc.set_threshold). CPython's first, 700 new container objects, means a young
    # collection every ~half batch at ingest rates, walking the items and rows of batches still being written;
    # they live for one commit (tens of ms) and are freed by reference counting, so waiting for 20,000 lets most
    # of them go unwalked (bench_server_ingest: the server's CPU per item -12 %). 100,000 goes further: CPython
    # counts container allocations minus frees, and batches freed from older generations pull the count down while
    # the young list grows, so at 20,000 each young collection walked everything younger than the last freeze:
    # bench_server_ingest made 18 of them of ~7 ms in 3 runs (0.4 us per item), and none at 100,000 (server CPU
    # per item -0.3 us in A/B pairs). A young collection walks what was made since the last freeze (every few
    # seconds) and still lives; only while that count grows for real (agents connecting) may one walk up to
    # 100,000 objects instead of 20,000.
    thresholds: tuple[int, int, int] = (100_000, 20, 20)


def due_to_thaw(policy: FreezePolicy, since_thaw: float) -> bool:
    return since_thaw >= policy.thaw_seconds


class HeapFreezer:
    """Runs in the server process only (its CLI entry point): tests that run a server in-process keep their GC."""

    def __init__(self, policy: FreezePolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or FreezePolicy()
        self.clock = clock
        self.thaws = 0

    async def run(self) -> None:
        gc.set_threshold(*self.policy.thresholds)
        gc.freeze()  # what start-up built (modules, pools, configuration) lives as long as the process
        thawed_at = self.clock()
        while True:
            await asyncio.sleep(self.policy.freeze_seconds)
            if due_to_thaw(self.policy, self.clock() - thawed_at):
                self.thaw()
                thawed_at = self.clock()
            gc.freeze()

    def thaw(self) -> None:
        frozen = gc.get_freeze_count()
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        self.thaws += 1
        log.info("garbage collector thawed the heap", extra={"fields": {
            "objects": frozen, "freed": freed, "seconds": round(time.perf_counter() - started, 3)}})
