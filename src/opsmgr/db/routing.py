"""Which items go to which database, and the exact rows a batch becomes there (pure).

DESIGN.md sections 1 and 4: alerts and discovery go to the operational DB only (alerts reach the warehouse by a
later sync); events, performance and state go to both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

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

    @property
    def items_written(self) -> int:
        return sum(self.written.values())

    @property
    def items_dropped(self) -> int:
        return sum(self.dropped.values())


def plan_write(batch: Batch, database: Database, retention: Retention, now: datetime) -> WritePlan:
    rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in PARTITIONED_TABLES.values()}
    spans: dict[str, tuple[datetime, datetime]] = {}
    alerts: list[Alert] = []
    discovery: list[DiscoveryItem] = []
    written: Counter[ItemKind] = Counter()
    dropped: Counter[tuple[ItemKind, DropReason]] = Counter()
    window = acceptance_window(now, retention.raw_days(database), retention.partitions_ahead_days)
    for item_no, item in enumerate(batch.items):
        if database not in ROUTES[item.kind]:
            continue
        if isinstance(item, Alert):
            alerts.append(item)
        elif isinstance(item, DiscoveryItem):
            discovery.append(item)
        else:
            moment = item.timestamp
            reason = window.drop_reason(moment)
            if reason is not None:
                dropped[item.kind, reason] += 1
                continue
            table = PARTITIONED_TABLES[item.kind]
            rows[table].append(row_of(batch, item_no, item))
            first, last = spans.get(table, (moment, moment))
            spans[table] = (min(first, moment), max(last, moment))
        written[item.kind] += 1
    # Every day between a table's oldest and newest row: a superset is harmless, and far cheaper per item.
    partitions = frozenset((table, day) for table, (first, last) in spans.items() for day in days_spanned(first, last))
    return WritePlan(database, {table: r for table, r in rows.items() if r}, alert_runs(alerts), tuple(discovery),
                     partitions, dict(written), dict(dropped))


def row_of(batch: Batch, item_no: int, item: Item) -> tuple[Any, ...]:
    """The row of a time-series item, in TABLE_COLUMNS order."""
    trace = (batch.epoch, batch.seq, item_no)
    if isinstance(item, Event):
        return (batch.agent, item.logged_at, item.object_key, item.channel, item.source, item.number,
                int(item.level), item.description, *trace)
    if isinstance(item, PerformanceSample):
        return (batch.agent, item.sampled_at, item.object_key, item.object_name, item.counter_name,
                item.instance_name, item.value, *trace)
    if isinstance(item, StateChange):
        return (batch.agent, item.changed_at, item.object_key, item.monitor, int(item.old_state),
                int(item.new_state), *trace)
    raise TypeError(f"{item.kind} items are upserted, not copied into a time-series table")


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
