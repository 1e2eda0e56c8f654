"""Ingest throughput: items/s committed to both databases by the exactly-once writers vs raw COPY into one.

Both are measured in the same run on the same throwaway PostgreSQL, alternating, on emptied tables, so the ratio
is what the machine's noise leaves comparable. The writers commit each bulk-lane batch to the operational DB and
the warehouse concurrently (as the server does), each in one transaction with its committed-batch row, and
again coalesced (several queued batches per transaction, as a server that fell behind does); the baseline COPYs
the same rows into one database's tables, in one COPY per table per run.

    .venv/bin/python -m bench.bench_ingest [--batches 200] [--items 500] [--coalesce 10] [--runs 5] [--no-fsync]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.common import Figure
from opsmgr.db.model import Batch, Database, Event, EventLevel, Item, Lane, PerformanceSample, Retention
from opsmgr.db.routing import TABLE_COLUMNS, plan_write
from opsmgr.db.schema import prepare_database
from opsmgr.db.writer import (
    CommitOutcome,
    write_operational,
    write_operational_batches,
    write_warehouse,
    write_warehouse_batches,
)
from opsmgr.dev.postgres import LocalPostgres

RESET = "TRUNCATE events, performance_samples, state_changes, committed_batches, late_data_drops"


def make_batches(count: int, items_per_batch: int, now: datetime) -> list[Batch]:
    """Bulk-lane batches of one agent, three performance samples to every event, within today's hour."""
    rng = random.Random(5723)
    epoch = uuid.uuid4()
    batches = []
    for seq in range(count):
        items: list[Item] = []
        for n in range(items_per_batch):
            at = now - timedelta(seconds=rng.randint(0, 3600))
            if n % 4 == 0:
                items.append(Event(at, "Linux.Computer:web01.contoso.test", "syslog", "sshd", 4625,
                                   EventLevel.WARNING, f"Failed password for invalid user from 10.0.{seq}.{n}"))
            else:
                items.append(PerformanceSample(at, "Linux.Computer:web01.contoso.test", "Processor",
                                               "% Processor Time", f"cpu{n % 16}", rng.random() * 100))
        batches.append(Batch("web01.contoso.test", epoch, seq, Lane.BULK, tuple(items)))
    return batches


async def timed(reset: Callable[[], Awaitable[None]], action: Callable[[], Awaitable[None]]) -> float:
    await reset()
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


async def main(batches_count: int, items_per_batch: int, coalesce: int, runs: int, fsync: bool) -> None:
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-bench-"))
    server = LocalPostgres(directory, fsync=fsync)
    server.start()
    try:
        admin = await asyncpg.connect(server.dsn())
        for name in ("operational", "warehouse", "raw"):
            await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        op, wh, raw = [await asyncpg.connect(server.dsn(n)) for n in ("operational", "warehouse", "raw")]
        now = datetime.now(UTC)
        for conn, database in ((op, Database.OPERATIONAL), (wh, Database.WAREHOUSE), (raw, Database.OPERATIONAL)):
            await prepare_database(conn, database, Retention(), now=now)
        batches = make_batches(batches_count, items_per_batch, now)
        items = batches_count * items_per_batch
        rows: dict[str, list[tuple[object, ...]]] = {}
        for sent in batches:
            for table, table_rows in plan_write(sent, Database.OPERATIONAL, Retention(), now).rows.items():
                rows.setdefault(table, []).extend(table_rows)

        async def reset_writers() -> None:
            await asyncio.gather(op.execute(RESET), wh.execute(RESET))

        async def reset_raw() -> None:
            await raw.execute(RESET)

        async def write_both() -> None:
            for sent in batches:
                results = await asyncio.gather(write_operational(op, sent, now=now),
                                               write_warehouse(wh, sent, now=now))
                assert all(r.outcome is CommitOutcome.COMMITTED for r in results)

        async def write_both_coalesced() -> None:
            for start in range(0, len(batches), coalesce):
                group = batches[start:start + coalesce]
                results = await asyncio.gather(write_operational_batches(op, group, now=now),
                                               write_warehouse_batches(wh, group, now=now))
                assert all(r.outcome is CommitOutcome.COMMITTED for rs in results for r in rs)

        async def raw_copy() -> None:
            for table, table_rows in rows.items():
                await raw.copy_records_to_table(table, records=table_rows, columns=TABLE_COLUMNS[table])

        writer_runs, coalesced_runs, raw_runs = [], [], []
        for _ in range(runs):
            raw_runs.append(items / await timed(reset_raw, raw_copy))
            writer_runs.append(items / await timed(reset_writers, write_both))
            coalesced_runs.append(items / await timed(reset_writers, write_both_coalesced))
        for conn in (op, wh, raw):
            await conn.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    writers = Figure("writers, one batch per transaction, operational + warehouse", "items/s", tuple(writer_runs))
    coalesced = Figure(f"writers, up to {coalesce} batches per transaction, operational + warehouse", "items/s",
                       tuple(coalesced_runs))
    baseline = Figure("raw COPY into one database", "rows/s", tuple(raw_runs))
    print(f"{batches_count} bulk batches x {items_per_batch} items (1 event : 3 performance samples), "
          f"fsync {'on' if fsync else 'off'}, PostgreSQL at {server.bin_dir}")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    for figure in (baseline, writers, coalesced):
        print(figure.line())
    for figure in (writers, coalesced):
        print(f"ratio {figure.name.split(',')[1].strip()} / raw COPY (medians): "
              f"{figure.median / baseline.median:.2f} (target >= 0.4)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=200, help="bulk-lane batches per run")
    parser.add_argument("--items", type=int, default=500, help="items per batch")
    parser.add_argument("--coalesce", type=int, default=10, help="batches per transaction when coalesced")
    parser.add_argument("--runs", type=int, default=5, help="runs of each measurement (medians are compared)")
    parser.add_argument("--no-fsync", action="store_true", help="trade durability for speed, as the tests do")
    args = parser.parse_args()
    asyncio.run(main(args.batches, args.items, args.coalesce, args.runs, fsync=not args.no_fsync))
