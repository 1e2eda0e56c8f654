"""`opsmgr db`: schema migrations for the operational database and the data warehouse."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import click

from opsmgr.db.migrations import SchemaMismatch
from opsmgr.db.model import Database, Retention
from opsmgr.db.schema import prepare_database

DSN_SCHEMES = ("postgresql", "postgres")


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced, fit for logs and error messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def check_dsn(option: str, dsn: str) -> None:
    """Refuse a DSN asyncpg would misread, naming the option, the value and the fix."""
    scheme = urlsplit(dsn).scheme
    if scheme not in DSN_SCHEMES:
        raise click.BadParameter(
            f"{redact_dsn(dsn)!r} is not a PostgreSQL URL: write postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
            param_hint=option)


@click.group("db")
def db() -> None:
    """Schema migrations for the OperationalDB and the DataWarehouse."""


@db.command("migrate")
@click.option("--operational-dsn", envvar="OPSMGR_OPERATIONAL_DSN", default=None, metavar="URL",
              help="postgresql:// URL of the operational database (or $OPSMGR_OPERATIONAL_DSN).")
@click.option("--warehouse-dsn", envvar="OPSMGR_WAREHOUSE_DSN", default=None, metavar="URL",
              help="postgresql:// URL of the data warehouse (or $OPSMGR_WAREHOUSE_DSN).")
@click.option("--partitions-ahead-days", type=click.IntRange(0, 31), default=Retention().partitions_ahead_days,
              show_default=True, help="Daily partitions to create past today.")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to wait for each database to accept a connection.")
@click.option("--create-database", is_flag=True,
              help="Create a database that does not exist yet (connecting to the server's `postgres` database).")
def migrate(operational_dsn: str | None, warehouse_dsn: str | None, partitions_ahead_days: int,
            connect_timeout: float, create_database: bool) -> None:
    """Apply pending migrations and create the coming days' partitions; safe to run again and concurrently."""
    targets = {Database.OPERATIONAL: ("--operational-dsn", operational_dsn),
               Database.WAREHOUSE: ("--warehouse-dsn", warehouse_dsn)}
    chosen = {database: (option, dsn) for database, (option, dsn) in targets.items() if dsn}
    if not chosen:
        raise click.UsageError("no database given: pass --operational-dsn and/or --warehouse-dsn (or set "
                               "OPSMGR_OPERATIONAL_DSN / OPSMGR_WAREHOUSE_DSN)")
    for option, dsn in chosen.values():
        check_dsn(option, dsn)
    retention = Retention(partitions_ahead_days=partitions_ahead_days)
    for database, (option, dsn) in chosen.items():
        click.echo(asyncio.run(_migrate_one(database, option, dsn, retention, connect_timeout,
                                            create_database=create_database)))


async def create_missing_database(dsn: str, connect_timeout: float) -> bool:
    """Create the database `dsn` names when it does not exist; returns whether it was created."""
    name = urlsplit(dsn).path.lstrip("/")
    maintenance = urlunsplit(urlsplit(dsn)._replace(path="/postgres"))
    conn = await asyncpg.connect(maintenance, timeout=connect_timeout)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False  # another migrator created it at the same moment
        return True
    finally:
        await conn.close()


async def _migrate_one(database: Database, option: str, dsn: str, retention: Retention,
                       connect_timeout: float, *, create_database: bool = False) -> str:
    try:
        if create_database:
            await create_missing_database(dsn, connect_timeout)
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise click.ClickException(
            f"cannot connect to the {database} database {redact_dsn(dsn)} ({option}): {exc}; check the host, "
            "port, credentials and database name, and that the server accepts connections") from exc
    try:
        report, partitions = await prepare_database(conn, database, retention)
    except SchemaMismatch as exc:
        raise click.ClickException(f"{option}: {exc}") from exc
    finally:
        await conn.close()
    applied = ", ".join(map(str, report.applied)) or "none"
    return (f"{database} ({redact_dsn(dsn)}): schema version {report.version}; applied {applied}; "
            f"{len(partitions.created)} partitions created")
