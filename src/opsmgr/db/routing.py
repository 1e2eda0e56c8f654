"""Which items go to which database, and the exact rows a batch becomes there (pure).

DESIGN.md sections 1 and 4: alerts and discovery go to the operational DB only (alerts reach the warehouse by a
later sync); events, performance and state go to both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from operator import itemgetter
from typing import Any
from uuid import UUID

from asyncpg.pgproto.pgproto import UUID as CopyUUID

from opsmgr.db.model import (
    FIRST_INACTIVE_RESOLUTION_STATE,
    Alert,
    Batch,
    Database,
    DiscoveryItem,
    DropReason,
    Event,
    ItemKind,
    PerformanceSample,
    Retention,
    StateChange,
)
from opsmgr.db.partitions import PARTITIONED_TABLES, PartitionKey, acceptance_window, days_spanned

ROUTES: Mapping[ItemKind, frozenset[Database]] = {
    ItemKind.EVENT: frozenset({Database.OPERATIONAL, Database.WAREHOUSE}),
    ItemKind.PERFORMANCE: frozenset({Database.OPERATIONAL, Database.WAREHOUSE}),
    ItemKind.STATE: frozenset({Database.OPERATIONAL, Database.WAREHOUSE}),
    ItemKind.ALERT: frozenset({Database.OPERATIONAL}),
    ItemKind.DISCOVERY: frozenset({Database.OPERATIONAL}),
}

# Column order of the COPY into each time-partitioned table; the last three trace a row to its batch.
TABLE_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "events": ("agent", "logged_at", "object_key", "channel", "source", "number", "level", "description",
               "batch_epoch", "batch_seq", "item_no"),
    "performance_samples": ("agent", "sampled_at", "object_key", "object_name", "counter_name", "instance_name",
                            "value", "batch_epoch", "batch_seq", "item_no"),
    "state_changes": ("agent", "changed_at", "object_key", "monitor", "old_state", "new_state",
                      "batch_epoch", "batch_seq", "item_no"),
}


TABLE_KINDS: Mapping[str, ItemKind] = {table: kind for kind, table in PARTITIONED_TABLES.items()}


def databases_for(batch: Batch) -> frozenset[Database]:
    """The databases that must acknowledge `batch` before the agent may drop it.

    An empty batch is recorded in the operational DB only, so it is still acknowledged somewhere.
    """
    targets: frozenset[Database] = frozenset()
    for kind in batch.kinds():
        targets |= ROUTES[kind]
    return targets or frozenset({Database.OPERATIONAL})


class AlertChange(StrEnum):
    RAISE = "raise"
    RESOLVE = "resolve"


@dataclass(frozen=True)
class WritePlan:
    """What one batch becomes in one database: rows per table, upserts, drops to count and partitions it needs."""

    database: Database
    rows: Mapping[str, list[tuple[Any, ...]]]
    alerts: tuple[tuple[AlertChange, tuple[Alert, ...]], ...]
    discovery: tuple[DiscoveryItem, ...]
    partitions: frozenset[PartitionKey]
    written: Mapping[ItemKind, int]
    dropped: Mapping[tuple[ItemKind, DropReason], int]
    # Each table's rows as binary COPY tuples, for the tables whose rows the batch's former made them of and that
    # lost none to the acceptance window; the writers COPY these bytes instead of encoding the rows again.
    copy_tuples: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def items_written(self) -> int:
        return sum(self.written.values())

    @property
    def items_dropped(self) -> int:
        return sum(self.dropped.values())


@dataclass(frozen=True, slots=True)
class Series:
    """What a batch's items become whatever the database: rows per time-series table (each row's second column is
    its timestamp), each table's oldest and newest timestamp, and the alerts and discovery to upsert."""

    rows: Mapping[str, list[tuple[Any, ...]]]
    spans: Mapping[str, tuple[datetime, datetime]]
    alerts: tuple[Alert, ...]
    discovery: tuple[DiscoveryItem, ...]
    # The rows of some tables as binary COPY tuples, when whoever formed the batch made them (attach_series_rows).
    copy_tuples: Mapping[str, bytes] = field(default_factory=dict)


def series_of(batch: Batch) -> Series:
    """The batch's rows, built on first use and kept on the batch: the operational and the warehouse writer of a
    bulk batch share them, so each item is turned into a row once, not once per database."""
    series: Series | None = batch._series
    if series is None:
        series = _series(batch)
        object.__setattr__(batch, "_series", series)  # a memo on frozen data; both writers run on one thread
    return series


def copy_epoch(epoch: UUID) -> CopyUUID:
    """A batch epoch as its rows carry it: asyncpg's own UUID type, whose binary COPY encoder copies its 16 bytes,
    where a uuid.UUID costs a call of the Python `bytes` property per row (a tenth of the COPY's client time). It is
    a uuid.UUID subclass, equal to it."""
    return CopyUUID(epoch.bytes)


def attach_series_rows(batch: Batch, rows: Mapping[str, list[tuple[Any, ...]]],
                       copy_tuples: Mapping[str, bytes]) -> None:
    """Give a batch of events and performance samples alone the rows its items become, built by whoever formed its
    items in the same pass (the server, from the wire: one pass per item instead of two), and the same rows as
    binary COPY tuples (opsmgr.db.copy_format). Each row must be exactly what `_series` builds: (agent, the item's
    fields in order, copy_epoch(epoch), seq, item number)."""
    if batch._series is not None or not batch.kinds() <= _BULK_SERIES:
        raise ValueError("attach_series_rows takes the rows of a batch of events and performance samples alone, "
                         "before its series is first used")
    filled = {table: found for table, found in rows.items() if found}
    series = Series(filled, {table: _span(found) for table, found in filled.items()}, (), (),
                    {table: copy_tuples[table] for table in filled})
    object.__setattr__(batch, "_series", series)  # a memo on frozen data, as series_of keeps it


def _series(batch: Batch) -> Series:
    rows: dict[str, list[tuple[Any, ...]]] = {}
    alerts: list[Alert] = []
    discovery: list[DiscoveryItem] = []
    agent, epoch, seq = batch.agent, copy_epoch(batch.epoch), batch.seq
    for item_no, item in enumerate(batch.items):
        table = _SERIES_TABLES.get(type(item))
        if table is not None:
            found = rows.get(table)
            if found is None:
                found = rows[table] = []
            found.append((agent, *item, epoch, seq, item_no))  # see _SERIES_TABLES
        elif isinstance(item, Alert):
            alerts.append(item)
        elif isinstance(item, DiscoveryItem):
            discovery.append(item)
    spans = {table: _span(found) for table, found in rows.items()}
    return Series(rows, spans, tuple(alerts), tuple(discovery))


_ROW_TIME = itemgetter(1)  # every time-series row is (agent, time, ...)


def _span(rows: list[tuple[Any, ...]]) -> tuple[datetime, datetime]:
    """The oldest and newest time of these rows (map with itemgetter: a third of a generator's cost per row)."""
    return min(map(_ROW_TIME, rows)), max(map(_ROW_TIME, rows))


def plan_write(batch: Batch, database: Database, retention: Retention, now: datetime) -> WritePlan:
    """The batch in one database: its routed rows inside the database's acceptance window, the rest counted."""
    series = series_of(batch)
    window = acceptance_window(now, retention.raw_days(database), retention.partitions_ahead_days)
    rows: dict[str, list[tuple[Any, ...]]] = {}
    written: dict[ItemKind, int] = {}
    dropped: Counter[tuple[ItemKind, DropReason]] = Counter()
    partitions: set[PartitionKey] = set()
    copy_tuples: dict[str, bytes] = {}
    for table, table_rows in series.rows.items():
        kind = TABLE_KINDS[table]
        if database not in ROUTES[kind]:
            continue
        first, last = series.spans[table]
        found = table_rows
        if first < window.cutoff or last >= window.horizon:
            # Some rows are outside the window (rare: late or clock-ahead data): sort them out one by one.
            kept = []
            for row in table_rows:
                reason = window.drop_reason(row[1])
                if reason is None:
                    kept.append(row)
                else:
                    dropped[kind, reason] += 1
            found = kept
            if not found:
                continue
            first, last = _span(found)
        elif table in series.copy_tuples:
            copy_tuples[table] = series.copy_tuples[table]
        rows[table] = found  # shared with the other database's plan: COPY only reads it
        written[kind] = len(found)
        # Every day between the table's oldest and newest row: a superset is harmless, and far cheaper per item.
        partitions.update((table, day) for day in days_spanned(first, last))
    alerts: tuple[tuple[AlertChange, tuple[Alert, ...]], ...] = ()
    discovery: tuple[DiscoveryItem, ...] = ()
    if database in ROUTES[ItemKind.ALERT] and series.alerts:
        alerts = alert_runs(series.alerts)
        written[ItemKind.ALERT] = len(series.alerts)
    if database in ROUTES[ItemKind.DISCOVERY] and series.discovery:
        discovery = series.discovery
        written[ItemKind.DISCOVERY] = len(series.discovery)
    return WritePlan(database, rows, alerts, discovery, frozenset(partitions), written, dict(dropped), copy_tuples)


# A time-series row is (agent, the item's fields in order, batch epoch, batch seq, item number): one tuple built per
# item, no per-kind code.
_SERIES_TABLES: Mapping[type, str] = {
    Event: PARTITIONED_TABLES[ItemKind.EVENT], PerformanceSample: PARTITIONED_TABLES[ItemKind.PERFORMANCE],
    StateChange: PARTITIONED_TABLES[ItemKind.STATE]}


_BULK_SERIES = frozenset({ItemKind.EVENT, ItemKind.PERFORMANCE})


def _check_series_columns() -> None:
    """At import: an item field added or reordered must fail loudly, not shift a column of every row."""
    for item_type in (Event, PerformanceSample, StateChange):
        table = _SERIES_TABLES[item_type]
        if TABLE_COLUMNS[table] != ("agent", *item_type._fields, "batch_epoch", "batch_seq", "item_no"):
            raise AssertionError(f"the fields of {item_type.__name__} are not the columns of {table}")


_check_series_columns()


def alert_runs(alerts: Sequence[Alert]) -> tuple[tuple[AlertChange, tuple[Alert, ...]], ...]:
    """Consecutive alerts grouped by change, keeping the agent's order (a raise, resolve, raise must stay so)."""
    runs: list[tuple[AlertChange, list[Alert]]] = []
    for alert in alerts:
        change = AlertChange.RESOLVE if alert.resolution_state >= FIRST_INACTIVE_RESOLUTION_STATE \
            else AlertChange.RAISE
        if runs and runs[-1][0] is change:
            runs[-1][1].append(alert)
        else:
            runs.append((change, [alert]))
    return tuple((change, tuple(group)) for change, group in runs)
