"""Migrations and partition maintenance on real PostgreSQL: idempotent, safe under concurrent runners."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from click.testing import CliRunner

from opsmgr.cli import main
from opsmgr.db.migrations import MIGRATIONS, SchemaMismatch
from opsmgr.db.model import Database, Retention
from opsmgr.db.partitions import PARTITION_COLUMNS, partition_day, partition_name
from opsmgr.db.schema import ensure_partitions, existing_partitions, maintain_partitions, migrate
from tests.integration.db.conftest import Databases


async def _tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                            "AND relkind IN ('r', 'p') ORDER BY relname")
    return [row["relname"] for row in rows]


@pytest.mark.parametrize("database", list(Database))
async def test_migrating_twice_applies_each_migration_once(postgres_dsn: str, database: Database) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        first = await migrate(conn, database)
        tables = await _tables(conn)
        second = await migrate(conn, database)
        assert first.applied == tuple(m.version for m in MIGRATIONS[database])
        assert second.applied == ()
        assert second.version == first.version == len(MIGRATIONS[database])
        assert await _tables(conn) == tables
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(MIGRATIONS[database])
    finally:
        await conn.close()


async def test_concurrent_runners_apply_each_migration_exactly_once(postgres_dsn: str) -> None:
    conns = [await asyncpg.connect(postgres_dsn) for _ in range(4)]
    try:
        reports = await asyncio.gather(*(migrate(conn, Database.OPERATIONAL) for conn in conns))
        assert sorted(len(report.applied) for report in reports) == [0, 0, 0, len(MIGRATIONS[Database.OPERATIONAL])]
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(
            MIGRATIONS[Database.OPERATIONAL])
    finally:
        for conn in conns:
            await conn.close()


async def test_the_warehouse_schema_is_refused_on_the_operational_database(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await migrate(conn, Database.OPERATIONAL)
        with pytest.raises(SchemaMismatch, match="give the warehouse its own database"):
            await migrate(conn, Database.WAREHOUSE)
    finally:
        await conn.close()


async def test_partitions_exist_from_today_for_the_days_ahead(databases: Databases) -> None:
    today = partition_day(datetime.now(UTC))
    for database in Database:
        found = await existing_partitions(databases.conn(database))
        assert {(table, today + timedelta(days=n)) for table in PARTITION_COLUMNS for n in range(3)} <= found


async def test_concurrent_partition_creators_create_each_partition_once(databases: Databases) -> None:
    day = partition_day(datetime.now(UTC)) - timedelta(days=3)
    wanted = [(table, day) for table in PARTITION_COLUMNS]
    others = [await asyncpg.connect(databases.operational_dsn) for _ in range(3)]
    try:
        created = await asyncio.gather(*(ensure_partitions(conn, wanted) for conn in others))
    finally:
        for conn in others:
            await conn.close()
    assert sorted(name for names in created for name in names) == sorted(
        partition_name(table, day) for table in PARTITION_COLUMNS)


async def test_partitions_inherit_the_parents_indexes(databases: Databases) -> None:
    name = partition_name("events", partition_day(datetime.now(UTC)))
    indexes = await databases.operational.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = $1", name)
    assert indexes == 1


async def test_maintenance_drops_partitions_past_retention_and_keeps_the_rest(databases: Databases) -> None:
    now = datetime.now(UTC)
    today = partition_day(now)
    old_days = [today - timedelta(days=n) for n in (8, 9, 12)]
    await ensure_partitions(databases.warehouse, [(t, d) for t in PARTITION_COLUMNS for d in old_days])
    operational = await maintain_partitions(databases.operational, Database.OPERATIONAL, Retention(), now=now)
    warehouse = await maintain_partitions(databases.warehouse, Database.WAREHOUSE, Retention(), now=now)
    assert operational.dropped == ()
    # The warehouse keeps raw data 10 days: the 12-day-old partitions go, the 8- and 9-day-old ones stay.
    assert sorted(warehouse.dropped) == sorted(partition_name(t, old_days[2]) for t in PARTITION_COLUMNS)
    assert ("events", old_days[0]) in await existing_partitions(databases.warehouse)


def test_opsmgr_db_migrate_brings_both_databases_up_and_can_run_again(postgres_dsn: str,
                                                                      warehouse_dsn: str) -> None:
    args = ["db", "migrate", "--operational-dsn", postgres_dsn, "--warehouse-dsn", warehouse_dsn]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "operational (" in first.output
    for database in Database:
        versions = ", ".join(str(m.version) for m in MIGRATIONS[database])
        assert f"{database} (" in first.output
        assert f"applied {versions}; 9 partitions created" in first.output
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert second.output.count("applied none; 0 partitions created") == 2


def test_opsmgr_db_migrate_refuses_one_database_for_both_roles(postgres_dsn: str) -> None:
    result = CliRunner().invoke(main, ["db", "migrate", "--operational-dsn", postgres_dsn,
                                       "--warehouse-dsn", postgres_dsn])
    assert result.exit_code == 1
    assert "--warehouse-dsn: the warehouse DSN points at a database that holds the operational schema" in result.output
