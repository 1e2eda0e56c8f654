"""Which migrations a database still needs, and the refusals when appending cannot get it there."""

from __future__ import annotations

import pytest

from opsmgr.db.migrations import MIGRATIONS, AppliedMigration, Migration, SchemaMismatch, pending_migrations
from opsmgr.db.model import Database

AVAILABLE = (Migration(1, "first", "CREATE TABLE a (x int)"), Migration(2, "second", "CREATE TABLE b (x int)"))


def applied(migration: Migration, database: str = "operational") -> AppliedMigration:
    return AppliedMigration(migration.version, migration.name, migration.checksum, database)


@pytest.mark.parametrize("database", list(Database))
def test_released_migrations_are_numbered_from_one_without_gaps(database: Database) -> None:
    assert [m.version for m in MIGRATIONS[database]] == list(range(1, len(MIGRATIONS[database]) + 1))


def test_a_fresh_database_needs_every_migration_in_order() -> None:
    assert pending_migrations(Database.OPERATIONAL, AVAILABLE[::-1], []) == list(AVAILABLE)


def test_a_current_database_needs_nothing_and_a_behind_one_only_the_rest() -> None:
    assert pending_migrations(Database.OPERATIONAL, AVAILABLE, [applied(m) for m in AVAILABLE]) == []
    assert pending_migrations(Database.OPERATIONAL, AVAILABLE, [applied(AVAILABLE[0])]) == [AVAILABLE[1]]


def test_an_edited_released_migration_is_refused_with_the_fix() -> None:
    edited = AppliedMigration(1, "first", "0" * 64, "operational")
    with pytest.raises(SchemaMismatch, match=r"operational migration 1 \('first'\) differs from what was applied"
                                             ".*restore it and put the change in a new migration"):
        pending_migrations(Database.OPERATIONAL, AVAILABLE, [edited])


def test_a_database_newer_than_this_opsmgr_asks_for_an_upgrade() -> None:
    newer = AppliedMigration(3, "third", "f" * 64, "warehouse")
    with pytest.raises(SchemaMismatch, match=r"at schema version 3 .*up to 2\): upgrade opsmgr"):
        pending_migrations(Database.WAREHOUSE, AVAILABLE, [newer])


def test_one_database_for_both_roles_is_refused() -> None:
    with pytest.raises(SchemaMismatch, match=r"the warehouse DSN points at a database that holds the operational "
                                             "schema .*: give the warehouse its own database"):
        pending_migrations(Database.WAREHOUSE, AVAILABLE, [applied(AVAILABLE[0], "operational")])
