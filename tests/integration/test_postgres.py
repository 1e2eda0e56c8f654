"""The throwaway PostgreSQL really is PostgreSQL, and each test gets a database of its own."""

from __future__ import annotations

import asyncpg

from opsmgr.dev.postgres import LocalPostgres


async def test_rows_written_through_asyncpg_read_back(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("CREATE TABLE heartbeat (agent text PRIMARY KEY, seen timestamptz NOT NULL)")
        await conn.executemany(
            "INSERT INTO heartbeat VALUES ($1, now())", [("web01.contoso.test",), ("db01.contoso.test",)]
        )
        rows = await conn.fetch("SELECT agent FROM heartbeat ORDER BY agent")
        version = await conn.fetchval("SHOW server_version_num")
    finally:
        await conn.close()
    assert [r["agent"] for r in rows] == ["db01.contoso.test", "web01.contoso.test"]
    assert int(version) >= 130000


async def test_each_test_starts_with_an_empty_database(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    assert tables == 0


def test_server_listens_only_on_loopback(postgres_server: LocalPostgres) -> None:
    assert postgres_server.dsn().startswith("postgresql://postgres@127.0.0.1:")
    assert postgres_server.pid is not None
