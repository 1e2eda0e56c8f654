"""DiskQueue throughput on this machine's disk: enqueue (durable, synchronous=FULL), seal batches, acknowledge.

Prints the median of several runs; never asserts. Run: .venv/bin/python bench/bench_agent_queue.py
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from opsmgr.agent.lanes import Lane
from opsmgr.agent.queue import QueueStore
from opsmgr.protocol import agent_channel_pb2 as pb

RUNS = 5
ITEMS = 50_000
ENQUEUE_CALL_SIZES = (1, 100, 1000)  # items per enqueue call: one fsync each


def sample(n: int) -> pb.Item:
    item = pb.Item()
    item.performance.object_key, item.performance.object_name = f"Linux.Computer:web01:{n % 50}", "Processor"
    item.performance.counter_name, item.performance.instance_name = "% Processor Time", "_Total"
    item.performance.value = n * 0.5
    item.performance.sampled_at.GetCurrentTime()
    return item


def timed(action: Callable[[], int]) -> float:
    started = time.perf_counter()
    count = action()
    return count / (time.perf_counter() - started)


def one_run(call_size: int) -> tuple[float, float, float]:
    directory = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    try:
        store = QueueStore(directory / "q.sqlite", 1 << 30)
        items = [sample(n) for n in range(ITEMS if call_size > 1 else 2_000)]

        def enqueue() -> int:
            for start in range(0, len(items), call_size):
                store.enqueue(items[start:start + call_size])
            return len(items)

        sealed: list[int] = []  # in flight: a replay of these is not a new batch

        def seal() -> int:
            count = 0
            while (batch := store.next_batch(Lane.BULK, sealed).batch) is not None:
                sealed.append(batch.seq)
                count += batch.item_count
            return count

        def acknowledge() -> int:
            acks = [pb.Ack(epoch=store.epoch, seq=seq, database=db, outcome=pb.Ack.OUTCOME_COMMITTED)
                    for seq in sealed for db in (pb.DATABASE_OPERATIONAL, pb.DATABASE_WAREHOUSE)]
            store.acknowledge(acks)
            return len(items)

        rates = timed(enqueue), timed(seal), timed(acknowledge)
        store.close()
        return rates
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    print(f"DiskQueue (SQLite {__import__('sqlite3').sqlite_version}, WAL, synchronous=FULL), median of {RUNS} runs")
    print(f"{'items/enqueue call':>20} {'enqueue items/s':>16} {'seal items/s':>14} {'ack items/s':>14}")
    for call_size in ENQUEUE_CALL_SIZES:
        runs = [one_run(call_size) for _ in range(RUNS)]
        medians = [statistics.median(run[i] for run in runs) for i in range(3)]
        print(f"{call_size:>20} {medians[0]:>16,.0f} {medians[1]:>14,.0f} {medians[2]:>14,.0f}")


if __name__ == "__main__":
    main()
