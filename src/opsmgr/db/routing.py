"""Which items go to which database, and the exact rows a batch becomes there (pure).

DESIGN.md sections 1 and 4: alerts and discovery go to the operational DB only (alerts reach the warehouse by a
later sync); events, performance and state go to both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import partial
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
    Item,
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
    # Each table's oldest and newest row time: the hours a warehouse write marks late follow from them.
    spans: Mapping[str, tuple[datetime, datetime]] = field(default_factory=dict)

    @property
    def items_written(self) -> int:
        return sum(self.written.values())

    @property
    def items_dropped(self) -> int:
        return sum(self.dropped.values())


class LazyRows(Mapping[str, list[tuple[Any, ...]]]):
    """Rows per table whose lists are made the first time one is looked at; which tables hold rows is known before.

    A server-formed bulk batch carries its rows as COPY tuples (`attach_bulk_series`), which the writers send as
    they are: the row tuples are made only for whoever looks (a replay outside the acceptance window, a test).
    """

    __slots__ = ("_make", "_rows", "_tables")

    def __init__(self, tables: Sequence[str], make: Callable[[], Mapping[str, list[tuple[Any, ...]]]]) -> None:
        self._tables = tuple(tables)
        self._make: Callable[[], Mapping[str, list[tuple[Any, ...]]]] | None = make
        self._rows: Mapping[str, list[tuple[Any, ...]]] = {}

    def __getitem__(self, table: str) -> list[tuple[Any, ...]]:
        if table not in self._tables:
            raise KeyError(table)
        if self._make is not None:
            self._rows, self._make = self._make(), None
        return self._rows[table]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    def __contains__(self, table: object) -> bool:
        return table in self._tables


@dataclass(frozen=True, slots=True)
class Series:
    """What a batch's items become whatever the database: rows per time-series table (each row's second column is
    its timestamp), how many and each table's oldest and newest timestamp, and the alerts and discovery to upsert."""

    rows: Mapping[str, list[tuple[Any, ...]]]
    counts: Mapping[str, int]
    spans: Mapping[str, tuple[datetime, datetime]]
    alerts: tuple[Alert, ...]
    discovery: tuple[DiscoveryItem, ...]
    # The rows of some tables as binary COPY tuples, when whoever formed the batch made them (attach_bulk_series).
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


def attach_bulk_series(batch: Batch, copy_tuples: Mapping[str, bytes], counts: Mapping[str, int],
                       spans: Mapping[str, tuple[datetime, datetime]]) -> None:
    """Give a deferred batch of events and performance samples alone (`Batch.deferred`) what whoever formed it
    made in the same pass over the wire: each table's rows as binary COPY tuples (opsmgr.db.copy_format), how many,
    and their oldest and newest time. The rows themselves are what `_series` makes of the items, made on demand."""
    if batch._series is not None or batch._deferred is None or not batch.kinds() <= _BULK_SERIES:
        raise ValueError("attach_bulk_series takes a deferred batch of events and performance samples alone, before "
                         "its series is first used")
    tables = [table for table, count in counts.items() if count]
    if set(tables) != set(spans) or not set(tables) <= set(copy_tuples):
        raise ValueError(f"attach_bulk_series needs the span and COPY tuples of each table with rows: {tables}")
    # The rows are made from the items' maker, not from the batch: the batch holds its series, and a series holding
    # the batch would be a reference cycle, freed only by the cyclic collector (which the server runs rarely).
    rows = LazyRows(tables, partial(_series_rows, batch.agent, batch.epoch, batch.seq, batch._deferred.make))
    series = Series(rows, {table: counts[table] for table in tables}, dict(spans), (), (),
                    {table: copy_tuples[table] for table in tables})
    object.__setattr__(batch, "_series", series)  # a memo on frozen data, as series_of keeps it


def _series_rows(agent: str, epoch: UUID, seq: int, make_items: Callable[[], tuple[Item, ...]],
                 ) -> Mapping[str, list[tuple[Any, ...]]]:
    return _series_of(agent, epoch, seq, make_items()).rows


def _series(batch: Batch) -> Series:
    return _series_of(batch.agent, batch.epoch, batch.seq, batch.items)


def _series_of(agent: str, batch_epoch: UUID, seq: int, items: Sequence[Item]) -> Series:
    rows: dict[str, list[tuple[Any, ...]]] = {}
    alerts: list[Alert] = []
    discovery: list[DiscoveryItem] = []
    epoch = copy_epoch(batch_epoch)
    for item_no, item in enumerate(items):
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
    return Series(rows, {table: len(found) for table, found in rows.items()}, spans, tuple(alerts), tuple(discovery))


_ROW_TIME = itemgetter(1)  # every time-series row is (agent, time, ...)


def _span(rows: list[tuple[Any, ...]]) -> tuple[datetime, datetime]:
    """The oldest and newest time of these rows (map with itemgetter: a third of a generator's cost per row)."""
    return min(map(_ROW_TIME, rows)), max(map(_ROW_TIME, rows))


def plan_write(batch: Batch, database: Database, retention: Retention, now: datetime) -> WritePlan:
    """The batch in one database: its routed rows inside the database's acceptance window, the rest counted."""
    series = series_of(batch)
    window = acceptance_window(now, retention.raw_days(database), retention.partitions_ahead_days)
    kept: dict[str, list[tuple[Any, ...]]] = {}  # the tables that lost rows to the window: what is left of them
    tables: list[str] = []
    written: dict[ItemKind, int] = {}
    dropped: Counter[tuple[ItemKind, DropReason]] = Counter()
    partitions: set[PartitionKey] = set()
    copy_tuples: dict[str, bytes] = {}
    spans: dict[str, tuple[datetime, datetime]] = {}
    for table, span in series.spans.items():
        kind = TABLE_KINDS[table]
        if database not in ROUTES[kind]:
            continue
        count, (first, last) = series.counts[table], span
        if first < window.cutoff or last >= window.horizon:
            # Some rows are outside the window (rare: late or clock-ahead data): sort them out one by one.
            found = []
            for row in series.rows[table]:
                reason = window.drop_reason(row[1])
                if reason is None:
                    found.append(row)
                else:
                    dropped[kind, reason] += 1
            if not found:
                continue
            kept[table], count = found, len(found)
            first, last = _span(found)
        elif table in series.copy_tuples:
            copy_tuples[table] = series.copy_tuples[table]
        tables.append(table)
        written[kind] = count
        spans[table] = (first, last)
        # Every day between the table's oldest and newest row: a superset is harmless, and far cheaper per item.
        partitions.update((table, day) for day in days_spanned(first, last))
    # The rows are the series' own (shared with the other database's plan: COPY only reads them) or what the window
    # kept; looked at only by a COPY of rows without their tuples, so a server-formed batch's are never made.
    rows = LazyRows(tables, lambda: {table: kept.get(table) or series.rows[table] for table in tables})
    alerts: tuple[tuple[AlertChange, tuple[Alert, ...]], ...] = ()
    discovery: tuple[DiscoveryItem, ...] = ()
    if database in ROUTES[ItemKind.ALERT] and series.alerts:
        alerts = alert_runs(series.alerts)
        written[ItemKind.ALERT] = len(series.alerts)
    if database in ROUTES[ItemKind.DISCOVERY] and series.discovery:
        discovery = series.discovery
        written[ItemKind.DISCOVERY] = len(series.discovery)
    return WritePlan(database, rows, alerts, discovery, frozenset(partitions), written, dict(dropped), copy_tuples,
                     spans)


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
