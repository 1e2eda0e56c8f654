"""Grooming on real PostgreSQL with the clock shifted forward (passed as `now`), never waited for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from opsmgr.db.aggregation import aggregate_warehouse, floor_hour
from opsmgr.db.grooming import groom
from opsmgr.db.model import Database, Lane, ResolutionState, Retention
from opsmgr.db.partitions import partition_day, partition_name
from opsmgr.db.schema import existing_partitions
from opsmgr.db.writer import write_operational, write_warehouse
from tests.integration.db.conftest import Databases
from tests.unit.db.builders import alert, batch, sample


async def count(conn: asyncpg.Connection, table: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


async def test_operational_grooming_drops_old_days_and_closed_alerts_but_never_active_ones(
        databases: Databases) -> None:
    op, now = databases.operational, datetime.now(UTC)
    await write_operational(op, batch(0, Lane.PRIORITY, [alert(1, now), alert(2, now)]))
    await write_operational(op, batch(1, Lane.PRIORITY, [alert(2, now, ResolutionState.CLOSED)]))
    await write_operational(op, batch(2, Lane.BULK, [sample(1, now)]))
    today = partition_day(now)

    early = await groom(op, Database.OPERATIONAL, Retention(), now=now + timedelta(days=6))
    assert early.partitions_dropped == () and early.deleted["alerts"] == 0

    later = await groom(op, Database.OPERATIONAL, Retention(), now=now + timedelta(days=8, hours=1))
    assert partition_name("performance_samples", today) in later.partitions_dropped
    assert ("performance_samples", today) not in await existing_partitions(op)
    assert later.deleted["alerts"] == 1  # the closed one; the active one is never groomed
    assert await op.fetchval("SELECT resolution_state FROM alerts") == 0
    assert later.deleted["committed_batches"] == 0  # a replay could still write rows: 7 + 2 + 1 days

    last = await groom(op, Database.OPERATIONAL, Retention(), now=now + timedelta(days=10, hours=1))
    assert last.deleted["committed_batches"] == 3
    assert await count(op, "alerts") == 1


async def test_warehouse_keeps_raw_data_ten_days_and_aggregates_per_their_retention(databases: Databases) -> None:
    wh, now = databases.warehouse, datetime.now(UTC)
    hour = floor_hour(now) - timedelta(hours=2)
    await write_warehouse(wh, batch(0, Lane.BULK, [sample(1, hour)]))
    await aggregate_warehouse(wh, now=now)
    assert await count(wh, "performance_hourly") > 0

    short = Retention(warehouse_aggregated_days=30)
    nine = await groom(wh, Database.WAREHOUSE, short, now=now + timedelta(days=9))
    assert nine.partitions_dropped == ()
    twelve = await groom(wh, Database.WAREHOUSE, short, now=now + timedelta(days=12))
    assert partition_name("performance_samples", partition_day(hour)) in twelve.partitions_dropped
    assert twelve.deleted["performance_hourly"] == 0 and await count(wh, "performance_hourly") > 0
    month = await groom(wh, Database.WAREHOUSE, short, now=now + timedelta(days=31))
    assert month.deleted["performance_hourly"] > 0 and month.deleted["performance_daily"] > 0
    assert await count(wh, "performance_hourly") == 0
