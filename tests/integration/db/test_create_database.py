"""`opsmgr db migrate --create-database` makes the databases the operator's migration Job names, once."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from click.testing import CliRunner

from opsmgr.cli import main
from opsmgr.dev.postgres import LocalPostgres


def test_create_database_makes_missing_databases_and_migrates_them(postgres_server: LocalPostgres) -> None:
    operational, warehouse = f"op_{uuid.uuid4().hex[:10]}", f"wh_{uuid.uuid4().hex[:10]}"
    args = ["db", "migrate", "--create-database", "--operational-dsn", postgres_server.dsn(operational),
            "--warehouse-dsn", postgres_server.dsn(warehouse)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "applied none" in again.output

    async def cleanup() -> None:
        admin = await asyncpg.connect(postgres_server.dsn())
        try:
            for name in (operational, warehouse):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(cleanup())


def test_without_the_flag_a_missing_database_is_an_error_naming_the_option(postgres_server: LocalPostgres) -> None:
    result = CliRunner().invoke(main, ["db", "migrate", "--operational-dsn",
                                       postgres_server.dsn(f"absent_{uuid.uuid4().hex[:8]}")])
    assert result.exit_code == 1
    assert "(--operational-dsn)" in result.output
