"""Daily partition arithmetic (pure): which day an item falls in, partition names, what to create and to drop.

Days are UTC days, so every management server and database agrees on them whatever their local time zone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from opsmgr.db.model import DropReason, ItemKind

# The time-partitioned tables and the column each is partitioned on; the same in both databases.
PARTITIONED_TABLES: Mapping[ItemKind, str] = {
    ItemKind.EVENT: "events",
    ItemKind.PERFORMANCE: "performance_samples",
    ItemKind.STATE: "state_changes",
}
PARTITION_COLUMNS: Mapping[str, str] = {
    "events": "logged_at",
    "performance_samples": "sampled_at",
    "state_changes": "changed_at",
}

_PARTITION_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")

PartitionKey = tuple[str, date]  # (parent table, UTC day)


def partition_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def parse_partition_name(name: str) -> PartitionKey | None:
    """The (table, day) a partition name stands for, or None when it is not one of ours."""
    match = _PARTITION_NAME.match(name)
    if match is None or match["table"] not in PARTITION_COLUMNS:
        return None
    try:
        return match["table"], datetime.strptime(match["day"], "%Y%m%d").date()
    except ValueError:
        return None


def partition_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a day's partition."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def retention_cutoff(now: datetime, retention_days: int) -> datetime:
    """Items older than this are beyond retention."""
    return now - timedelta(days=retention_days)


@dataclass(frozen=True, slots=True)
class AcceptanceWindow:
    """[cutoff, horizon): the timestamps a database accepts now; computed once per batch, checked per item."""

    cutoff: datetime  # older is beyond retention
    horizon: datetime  # this or later comes from a clock that is days ahead: past the last partition we create

    def drop_reason(self, moment: datetime) -> DropReason | None:
        if moment < self.cutoff:
            return DropReason.BEYOND_RETENTION
        if moment >= self.horizon:
            return DropReason.AHEAD_OF_CLOCK
        return None


def acceptance_window(now: datetime, retention_days: int, ahead_days: int) -> AcceptanceWindow:
    last_day = partition_day(now) + timedelta(days=ahead_days)
    return AcceptanceWindow(retention_cutoff(now, retention_days), partition_bounds(last_day)[1])


def drop_reason(moment: datetime, now: datetime, retention_days: int, ahead_days: int) -> DropReason | None:
    """Why an item timestamped `moment` must be dropped, or None when it belongs in a partition."""
    return acceptance_window(now, retention_days, ahead_days).drop_reason(moment)


def days_spanned(first: datetime, last: datetime) -> list[date]:
    """Every UTC day from `first`'s through `last`'s."""
    start, end = partition_day(first), partition_day(last)
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def partitions_ahead(now: datetime, ahead_days: int) -> list[PartitionKey]:
    """Every table's partitions from today through today + ahead_days."""
    today = partition_day(now)
    days = [today + timedelta(days=offset) for offset in range(ahead_days + 1)]
    return [(table, day) for table in PARTITION_COLUMNS for day in days]


def expired_partitions(existing: Iterable[PartitionKey], now: datetime,
                       retention_days: Mapping[str, int]) -> list[PartitionKey]:
    """Partitions whose whole day lies before their table's retention cutoff, oldest first.

    A partition holding even one row still within retention is kept; it goes the next day.
    """
    expired = []
    for table, day in existing:
        cutoff = retention_cutoff(now, retention_days[table])
        if partition_bounds(day)[1] <= cutoff:
            expired.append((table, day))
    return sorted(expired, key=lambda key: (key[1], key[0]))


def missing_partitions(wanted: Iterable[PartitionKey], existing: Iterable[PartitionKey]) -> list[PartitionKey]:
    """What to create, in a stable order so concurrent creators lock in the same order."""
    return sorted(set(wanted) - set(existing), key=lambda key: (key[1], key[0]))
