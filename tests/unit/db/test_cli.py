"""`opsmgr db migrate` refuses bad arguments with the option, the value and the fix, before any connection."""

from __future__ import annotations

from click.testing import CliRunner

from opsmgr.cli import main
from opsmgr.db.cli import redact_dsn


def test_db_is_listed_in_help() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert "db" in result.output


def test_migrate_without_any_dsn_names_both_options() -> None:
    result = CliRunner().invoke(main, ["db", "migrate"], env={"OPSMGR_OPERATIONAL_DSN": "",
                                                             "OPSMGR_WAREHOUSE_DSN": ""})
    assert result.exit_code == 2
    assert "pass --operational-dsn and/or --warehouse-dsn" in result.output


def test_a_dsn_that_is_not_a_postgresql_url_is_named_without_its_password() -> None:
    result = CliRunner().invoke(main, ["db", "migrate", "--warehouse-dsn", "mysql://opsmgr:s3cret@db/warehouse"])
    assert result.exit_code == 2
    assert "--warehouse-dsn" in result.output
    assert "mysql://opsmgr:***@db/warehouse" in result.output
    assert "s3cret" not in result.output
    assert "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE" in result.output


def test_an_unreachable_database_is_named_with_the_option_and_the_fix() -> None:
    result = CliRunner().invoke(main, ["db", "migrate", "--operational-dsn",
                                       "postgresql://opsmgr:s3cret@127.0.0.1:1/ops", "--connect-timeout", "2"])
    assert result.exit_code == 1
    assert "cannot connect to the operational database postgresql://opsmgr:***@127.0.0.1:1/ops" in result.output
    assert "(--operational-dsn)" in result.output
    assert "s3cret" not in result.output


def test_redaction_leaves_a_dsn_without_password_alone() -> None:
    assert redact_dsn("postgresql://postgres@127.0.0.1:5432/ops") == "postgresql://postgres@127.0.0.1:5432/ops"
