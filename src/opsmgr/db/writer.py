"""Exactly-once batch writers: one per database, each commits a batch's rows with its committed-batch row.

The committed-batch row is claimed first in the transaction with ON CONFLICT DO NOTHING: a concurrent writer of
the same batch waits on that key until the first commits, then finds it taken and reports it already committed,
without writing a row (so the duplicate-commit race never surfaces as a unique violation). Replays in any
order, duplicate sends and epoch resets therefore never duplicate or lose.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import chain

import asyncpg

from opsmgr.db.aggregation import late_hour_marks_of_spans, mark_late_hours
from opsmgr.db.copy_format import COPY_HEADER, COPY_TRAILER
from opsmgr.db.model import Batch, BatchId, Database, DropReason, HealthState, ItemKind, Retention
from opsmgr.db.routing import TABLE_COLUMNS, AlertChange, WritePlan, plan_write
from opsmgr.db.schema import ensure_partitions

DEFAULT_RETENTION = Retention()


class CommitOutcome(StrEnum):
    COMMITTED = "committed"
    ALREADY_COMMITTED = "already_committed"


@dataclass(frozen=True)
class CommitResult:
    """What the server acknowledges to the agent for one database, and feeds its metrics with."""

    database: Database
    batch: BatchId
    outcome: CommitOutcome
    written: Mapping[ItemKind, int]
    dropped: Mapping[tuple[ItemKind, DropReason], int]


async def prepare_writer_connection(conn: asyncpg.Connection) -> None:
    """Give a writers' connection its timestamptz codec; pass it as the `init` of the writers' pool.

    asyncpg's own binary encoder compares every value with its (naive) infinity datetimes, and each comparison of an
    aware datetime calls its tzinfo, then converts it to UTC: two thirds of a COPY's client time for our rows, and
    the writers encode every row twice (once per database). This one takes the aware datetimes the model guarantees
    and sends microseconds since PostgreSQL's epoch; only connections that write batches use it.
    """
    await conn.set_type_codec("timestamptz", schema="pg_catalog", encoder=timestamptz_to_wire,
                              decoder=timestamptz_from_wire, format="tuple")


_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_INFINITY, _PG_MINUS_INFINITY = 2**63 - 1, -(2**63)


def timestamptz_to_wire(value: datetime) -> tuple[int]:
    """An aware datetime as PostgreSQL's binary timestamptz: microseconds since 2000-01-01 UTC."""
    if value.tzinfo is None:
        raise TypeError(f"timestamptz {value.isoformat()} has no time zone: the writers take aware times only")
    # From the difference's fields: a quarter cheaper than dividing timedeltas, and this runs per row per database.
    since = value - _PG_EPOCH
    return ((since.days * 86400 + since.seconds) * 1_000_000 + since.microseconds,)


def timestamptz_from_wire(value: tuple[int]) -> datetime:
    """The inverse, with PostgreSQL's infinities as asyncpg's own codec gives them (naive max and min)."""
    (microseconds,) = value
    if microseconds == _PG_INFINITY:
        return datetime.max
    if microseconds == _PG_MINUS_INFINITY:
        return datetime.min
    return _PG_EPOCH + timedelta(microseconds=microseconds)


async def write_operational(conn: asyncpg.Connection, batch: Batch, retention: Retention = DEFAULT_RETENTION,
                            *, now: datetime | None = None) -> CommitResult:
    """Commit `batch`'s alerts, discovery, events, performance and state to the operational DB, once."""
    return (await write_operational_batches(conn, [batch], retention, now=now))[0]


async def write_warehouse(conn: asyncpg.Connection, batch: Batch, retention: Retention = DEFAULT_RETENTION,
                          *, now: datetime | None = None) -> CommitResult:
    """Commit `batch`'s events, performance and state to the warehouse, once (alerts arrive by sync)."""
    return (await write_warehouse_batches(conn, [batch], retention, now=now))[0]


async def write_operational_batches(conn: asyncpg.Connection, batches: Sequence[Batch],
                                    retention: Retention = DEFAULT_RETENTION,
                                    *, now: datetime | None = None) -> list[CommitResult]:
    """Commit several batches (e.g. all that queued up while the database was busy) in one transaction.

    One commit, one COPY per table: the cost of a durable commit is shared, which is what lets ingest keep up when
    the database falls behind. Results are in the order of `batches`; a failure commits none of them.
    """
    return await _write(conn, batches, Database.OPERATIONAL, retention, now)


async def write_warehouse_batches(conn: asyncpg.Connection, batches: Sequence[Batch],
                                  retention: Retention = DEFAULT_RETENTION,
                                  *, now: datetime | None = None) -> list[CommitResult]:
    """The warehouse's counterpart of write_operational_batches."""
    return await _write(conn, batches, Database.WAREHOUSE, retention, now)


async def _write(conn: asyncpg.Connection, batches: Sequence[Batch], database: Database, retention: Retention,
                 now: datetime | None) -> list[CommitResult]:
    if not batches:
        return []
    moment = now or datetime.now(UTC)
    plans = [plan_write(batch, database, retention, moment) for batch in batches]
    try:
        claimed = await _commit(conn, batches, plans)
    except asyncpg.CheckViolationError as exc:
        if "no partition" not in str(exc):
            raise
        # Late data within retention, or a day the periodic maintenance has not reached: create and retry once.
        await ensure_partitions(conn, frozenset().union(*(plan.partitions for plan in plans)))
        claimed = await _commit(conn, batches, plans)
    return [CommitResult(database, batch.id, CommitOutcome.COMMITTED, plan.written, plan.dropped)
            if index in claimed else CommitResult(database, batch.id, CommitOutcome.ALREADY_COMMITTED, {}, {})
            for index, (batch, plan) in enumerate(zip(batches, plans, strict=True))]


async def _commit(conn: asyncpg.Connection, batches: Sequence[Batch], plans: Sequence[WritePlan]) -> set[int]:
    """Write the plans of the batches not committed before, in one transaction; returns their indexes."""
    async with conn.transaction():
        # Claimed in key order, so two writers of overlapping groups wait on each other and never deadlock.
        order = sorted(range(len(batches)), key=lambda i: (batches[i].agent, batches[i].epoch, batches[i].seq))
        rows = await conn.fetch(
            """INSERT INTO committed_batches (agent, epoch, batch_seq, lane, items_written, items_dropped)
               SELECT * FROM unnest($1::text[], $2::uuid[], $3::bigint[], $4::text[], $5::int[], $6::int[])
               ON CONFLICT DO NOTHING RETURNING agent, epoch, batch_seq""",
            *zip(*[(batches[i].agent, batches[i].epoch, batches[i].seq, batches[i].lane.value,
                    plans[i].items_written, plans[i].items_dropped) for i in order], strict=True))
        fresh = {(row["agent"], row["epoch"], row["batch_seq"]) for row in rows}
        claimed: set[int] = set()
        for index, batch in enumerate(batches):
            key = (batch.agent, batch.epoch, batch.seq)
            if key in fresh:  # the first of several copies of one batch in the group takes it
                fresh.discard(key)
                claimed.add(index)
        if not claimed:
            return claimed
        mine = [plans[index] for index in sorted(claimed)]
        for table, columns in TABLE_COLUMNS.items():
            holding = [plan for plan in mine if table in plan.rows]  # which tables hold rows is known without them
            if not holding:
                continue
            if all(table in plan.copy_tuples for plan in holding):
                # The tuples made when the batches were formed: the same bytes go to both databases, each batch's as
                # a CopyData message of its own (joining them first copied every byte once more per database).
                chunks = (COPY_HEADER, *(plan.copy_tuples[table] for plan in holding), COPY_TRAILER)
                await conn.copy_to_table(table, source=_chunks(chunks), columns=columns, format="binary")
            else:
                # Joined in C: a comprehension costs a bytecode round per row, and this runs for every row.
                records = list(chain.from_iterable(plan.rows[table] for plan in holding))
                await conn.copy_records_to_table(table, records=records, columns=columns)
        if mine[0].database is Database.WAREHOUSE:
            await mark_late_hours(conn, late_hour_marks_of_spans(
                (batches[index].agent, plans[index].spans, plans[index].rows) for index in sorted(claimed)))
        for index in sorted(claimed):
            await _upsert_priority_items(conn, batches[index].agent, plans[index])
        dropped: Counter[tuple[ItemKind, DropReason]] = Counter()
        for plan in mine:
            dropped.update(plan.dropped)
        if dropped:
            # Sorted so concurrent batches lock the counter rows in one order and never deadlock.
            await conn.executemany(_COUNT_DROPS, [
                (kind.value, reason.value, count) for (kind, reason), count in sorted(dropped.items())])
    return claimed


async def _chunks(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    """The chunks as the async iterable asyncpg's COPY takes to send each in a message of its own."""
    for chunk in chunks:
        yield chunk


async def _upsert_priority_items(conn: asyncpg.Connection, agent: str, plan: WritePlan) -> None:
    for change, alerts in plan.alerts:
        if change is AlertChange.RAISE:
            await conn.executemany(_RAISE_ALERT, [
                (agent, a.object_key, a.source, a.name, a.description, int(a.severity), int(a.priority),
                 a.raised_at) for a in alerts])
        else:
            await conn.executemany(_RESOLVE_ALERT, [
                (agent, a.object_key, a.source, int(a.resolution_state), a.raised_at) for a in alerts])
    # A monitor back to Healthy resolves its alert, even when the agent's own resolution was lost or evicted.
    healthy = [row for row in plan.rows.get("state_changes", ()) if row[_NEW_STATE] == HealthState.HEALTHY]
    if healthy:
        await conn.executemany(_AUTO_RESOLVE_MONITOR_ALERT, [
            (agent, row[_OBJECT_KEY], row[_MONITOR], row[_CHANGED_AT]) for row in healthy])
    if plan.discovery:
        await conn.executemany(_UPSERT_DISCOVERY, [
            (agent, d.object_key, d.class_name, d.display_name, json.dumps(dict(d.properties)), d.discovered_at)
            for d in plan.discovery])


# Every change stamps change_xid: the transaction id the warehouse sync uses as its watermark.
_RAISE_ALERT = """
INSERT INTO alerts AS a (agent, object_key, source, name, description, severity, priority, raised_at, last_raised_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
ON CONFLICT (agent, object_key, source) WHERE resolution_state < 254
DO UPDATE SET repeat_count = a.repeat_count + 1,
              last_raised_at = greatest(a.last_raised_at, excluded.last_raised_at),
              modified_at = now(), change_xid = pg_current_xact_id()::text::bigint
"""

_RESOLVE_ALERT = """
UPDATE alerts SET resolution_state = $4, resolved_at = $5,
                  modified_at = now(), change_xid = pg_current_xact_id()::text::bigint
WHERE agent = $1 AND object_key = $2 AND source = $3 AND resolution_state < 254
"""

_CHANGED_AT, _OBJECT_KEY, _MONITOR, _NEW_STATE = (TABLE_COLUMNS["state_changes"].index(column) for column in (
    "changed_at", "object_key", "monitor", "new_state"))

# Only a change at or after the alert's last occurrence resolves it, so a replayed old change resolves nothing.
_AUTO_RESOLVE_MONITOR_ALERT = """
UPDATE alerts SET resolution_state = 254, resolved_at = $4,
                  modified_at = now(), change_xid = pg_current_xact_id()::text::bigint
WHERE agent = $1 AND object_key = $2 AND source = $3 AND resolution_state < 254 AND last_raised_at <= $4
"""

# Out-of-order replays must not let an older discovery overwrite a newer one, hence the comparisons.
_UPSERT_DISCOVERY = """
INSERT INTO discovered_objects AS d (agent, object_key, class_name, display_name, properties, discovered_at,
                                     last_seen_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $6)
ON CONFLICT (agent, object_key) DO UPDATE SET
    class_name = CASE WHEN excluded.last_seen_at >= d.last_seen_at THEN excluded.class_name ELSE d.class_name END,
    display_name = CASE WHEN excluded.last_seen_at >= d.last_seen_at THEN excluded.display_name
                        ELSE d.display_name END,
    properties = CASE WHEN excluded.last_seen_at >= d.last_seen_at THEN excluded.properties ELSE d.properties END,
    discovered_at = least(d.discovered_at, excluded.discovered_at),
    last_seen_at = greatest(d.last_seen_at, excluded.last_seen_at)
"""

_COUNT_DROPS = """
INSERT INTO late_data_drops AS l (kind, reason, dropped) VALUES ($1, $2, $3)
ON CONFLICT (kind, reason) DO UPDATE SET dropped = l.dropped + excluded.dropped, last_dropped_at = now()
"""
