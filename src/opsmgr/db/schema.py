"""Applying migrations and keeping daily partitions in place, over asyncpg (the decisions live in pure modules).

Concurrent runners (every management server replica at start, the operator's bootstrap) are serialised by
advisory locks, so each migration and each partition is created exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from opsmgr.db.migrations import MIGRATIONS, SCHEMA_MIGRATIONS_DDL, AppliedMigration, pending_migrations
from opsmgr.db.model import Database, Retention
from opsmgr.db.partitions import (
    PARTITION_COLUMNS,
    PartitionKey,
    expired_partitions,
    missing_partitions,
    parse_partition_name,
    partition_bounds,
    partition_name,
    partitions_ahead,
)

# Advisory lock keys (two int4s: "opsm" and a purpose), so opsmgr's locks never collide with another tool's.
LOCK_NAMESPACE = 0x6F70736D
MIGRATION_LOCK = 1
PARTITION_LOCK = 2


@dataclass(frozen=True)
class MigrationReport:
    database: Database
    applied: tuple[int, ...]
    version: int


@dataclass(frozen=True)
class PartitionReport:
    created: tuple[str, ...]
    dropped: tuple[str, ...]


async def migrate(conn: asyncpg.Connection, database: Database) -> MigrationReport:
    """Bring `database` to the newest schema; a no-op when it is there already."""
    await conn.execute("SELECT pg_advisory_lock($1, $2)", LOCK_NAMESPACE, MIGRATION_LOCK)
    try:
        await conn.execute(SCHEMA_MIGRATIONS_DDL)
        rows = await conn.fetch("SELECT version, name, checksum, database FROM schema_migrations ORDER BY version")
        applied = [AppliedMigration(r["version"], r["name"], r["checksum"], r["database"]) for r in rows]
        done = []
        for migration in pending_migrations(database, MIGRATIONS[database], applied):
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, database) VALUES ($1, $2, $3, $4)",
                    migration.version, migration.name, migration.checksum, database.value)
            done.append(migration.version)
        version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_NAMESPACE, MIGRATION_LOCK)
    return MigrationReport(database, tuple(done), int(version))


async def existing_partitions(conn: asyncpg.Connection) -> set[PartitionKey]:
    rows = await conn.fetch(
        """SELECT child.relname FROM pg_inherits
           JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
           JOIN pg_class child ON child.oid = pg_inherits.inhrelid
           WHERE parent.relname = ANY($1::text[]) AND parent.relnamespace = 'public'::regnamespace""",
        list(PARTITION_COLUMNS))
    found = (parse_partition_name(row["relname"]) for row in rows)
    return {key for key in found if key is not None}


async def ensure_partitions(conn: asyncpg.Connection, wanted: Iterable[PartitionKey]) -> tuple[str, ...]:
    """Create whichever of `wanted` do not exist yet; returns the names created."""
    wanted = set(wanted)
    if not wanted:
        return ()
    created = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, PARTITION_LOCK)
        for table, day in missing_partitions(wanted, await existing_partitions(conn)):
            name = partition_name(table, day)
            start, end = partition_bounds(day)
            # Build then ATTACH: attaching locks the parent SHARE UPDATE EXCLUSIVE, so ingest keeps flowing,
            # where CREATE TABLE ... PARTITION OF would block every writer of the parent.
            await conn.execute(f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
            await conn.execute(f"""ALTER TABLE "{table}" ATTACH PARTITION "{name}"
                                   FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')""")
            created.append(name)
    return tuple(created)


async def maintain_partitions(conn: asyncpg.Connection, database: Database, retention: Retention,
                              *, now: datetime | None = None, drop_expired: bool = True) -> PartitionReport:
    """Create today's and the coming days' partitions and, unless told not to, drop those past retention.

    The management server runs this periodically (hourly is plenty); `opsmgr db migrate` runs it once.
    """
    now = now or datetime.now(UTC)
    created = await ensure_partitions(conn, partitions_ahead(now, retention.partitions_ahead_days))
    dropped: list[str] = []
    if drop_expired:
        days = {table: retention.raw_days(database) for table in PARTITION_COLUMNS}
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, PARTITION_LOCK)
            for table, day in expired_partitions(await existing_partitions(conn), now, days):
                name = partition_name(table, day)
                await conn.execute(f'DROP TABLE "{name}"')
                dropped.append(name)
    return PartitionReport(created, tuple(dropped))


async def prepare_database(conn: asyncpg.Connection, database: Database, retention: Retention,
                           *, now: datetime | None = None) -> tuple[MigrationReport, PartitionReport]:
    """Migrate and create the partitions ahead; what `opsmgr db migrate` and a server's start-up call."""
    report = await migrate(conn, database)
    partitions = await maintain_partitions(conn, database, retention, now=now, drop_expired=False)
    return report, partitions
