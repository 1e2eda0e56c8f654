"""Two real databases per test, an operational one and a warehouse, migrated and with partitions in place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from opsmgr.db.model import Database, Retention
from opsmgr.db.schema import prepare_database
from opsmgr.dev.postgres import LocalPostgres
from tests.conftest import scratch_database


@dataclass
class Databases:
    operational_dsn: str
    warehouse_dsn: str
    operational: asyncpg.Connection
    warehouse: asyncpg.Connection

    def dsn(self, database: Database) -> str:
        return self.operational_dsn if database is Database.OPERATIONAL else self.warehouse_dsn

    def conn(self, database: Database) -> asyncpg.Connection:
        return self.operational if database is Database.OPERATIONAL else self.warehouse


@pytest.fixture
async def warehouse_dsn(postgres_server: LocalPostgres) -> AsyncIterator[str]:
    """A second fresh database on the session's server, for the warehouse."""
    async with scratch_database(postgres_server, "wh") as dsn:
        yield dsn


@pytest.fixture
async def databases(postgres_dsn: str, warehouse_dsn: str) -> AsyncIterator[Databases]:
    operational = await asyncpg.connect(postgres_dsn)
    warehouse = await asyncpg.connect(warehouse_dsn)
    try:
        await prepare_database(operational, Database.OPERATIONAL, Retention())
        await prepare_database(warehouse, Database.WAREHOUSE, Retention())
        yield Databases(postgres_dsn, warehouse_dsn, operational, warehouse)
    finally:
        await operational.close()
        await warehouse.close()
