"""Daily UTC partitions: naming, bounds, what to create ahead, what is late, what has expired."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from opsmgr.db.model import DropReason
from opsmgr.db.partitions import (
    drop_reason,
    expired_partitions,
    missing_partitions,
    parse_partition_name,
    partition_bounds,
    partition_day,
    partition_name,
    partitions_ahead,
)
from tests.unit.db.builders import NOON

RETENTION = {"events": 7, "performance_samples": 7, "state_changes": 10}


def test_partition_day_is_the_utc_day_whatever_the_offset() -> None:
    late_evening_in_new_york = datetime(2026, 11, 25, 21, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert partition_day(late_evening_in_new_york) == date(2026, 11, 26)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_every_moment_lies_within_its_partitions_bounds(moment: datetime) -> None:
    start, end = partition_bounds(partition_day(moment))
    assert start <= moment < end


def test_partition_names_round_trip_and_foreign_tables_are_ignored() -> None:
    assert partition_name("events", date(2026, 1, 2)) == "events_p20260102"
    assert parse_partition_name("performance_samples_p20260102") == ("performance_samples", date(2026, 1, 2))
    assert parse_partition_name("alerts_p20260102") is None
    assert parse_partition_name("events_p20261399") is None
    assert parse_partition_name("events_old") is None


def test_partitions_ahead_cover_today_and_the_next_days_for_every_table() -> None:
    keys = partitions_ahead(NOON, 2)
    assert len(keys) == 9
    assert {day for _, day in keys} == {date(2026, 11, 25), date(2026, 11, 26), date(2026, 11, 27)}


def test_data_within_retention_is_kept_and_older_data_is_beyond_retention() -> None:
    assert drop_reason(NOON - timedelta(days=6, hours=23), NOON, 7, 2) is None
    assert drop_reason(NOON - timedelta(days=7, seconds=1), NOON, 7, 2) is DropReason.BEYOND_RETENTION


def test_data_past_the_last_partition_ahead_is_ahead_of_clock() -> None:
    last_moment_accepted = datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC)
    assert drop_reason(last_moment_accepted, NOON, 7, 2) is None
    assert drop_reason(last_moment_accepted + timedelta(seconds=1), NOON, 7, 2) is DropReason.AHEAD_OF_CLOCK


def test_a_partition_expires_only_when_its_whole_day_is_beyond_retention() -> None:
    existing = [("events", date(2026, 11, 17)), ("events", date(2026, 11, 18)), ("events", date(2026, 11, 19)),
                ("state_changes", date(2026, 11, 15)), ("state_changes", date(2026, 11, 14))]
    # events keep 7 days: cutoff 2026-11-18 12:00, so the 18th still holds rows within retention.
    assert expired_partitions(existing, NOON, RETENTION) == [("state_changes", date(2026, 11, 14)),
                                                             ("events", date(2026, 11, 17))]


def test_kept_late_data_never_lands_in_an_expired_partition() -> None:
    for hours in range(0, 24 * 9):
        moment = NOON - timedelta(hours=hours)
        if drop_reason(moment, NOON, 7, 2) is None:
            assert not expired_partitions([("events", partition_day(moment))], NOON, RETENTION)


def test_missing_partitions_are_the_wanted_ones_not_there_oldest_first() -> None:
    wanted = [("events", date(2026, 11, 26)), ("events", date(2026, 11, 25)), ("state_changes", date(2026, 11, 25))]
    assert missing_partitions(wanted, [("state_changes", date(2026, 11, 25))]) == [
        ("events", date(2026, 11, 25)), ("events", date(2026, 11, 26))]
