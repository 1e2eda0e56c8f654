"""Grooming: what each database forgets, and when (ManagementGroup `spec.retention`, Operations Manager's ages).

- Raw events, performance and state go by dropping whole daily partitions (operational 7 d, warehouse 10 d): no
  row-by-row delete, no bloat.
- Alerts: active alerts are never groomed; resolved and closed ones go `operational_days` after they were
  resolved (the warehouse keeps their history `alert_days`). Storms go once resolved that long with no members.
- Warehouse aggregates go after `warehouse_aggregated_days`, by indexed delete of whole hours and days (a small
  fraction of the raw volume; partition them monthly if that ever shows in the vacuum statistics).
- Delivered or abandoned notifications go `operational_days` after their last attempt; pending ones stay.
- `committed_batches` (the exactly-once record): a row may go only once replaying its batch could not write
  anything. A replay drops every time-series item older than the raw retention, and an item in a batch committed
  at C is stamped before C + partitions_ahead_days + 1 day (the acceptance horizon), so the row is kept
  raw_days + partitions_ahead_days + 1 day after C. Alerts and discovery in a batch still queued on an agent that
  long would be applied again: discovery upserts are idempotent, an alert would be raised again (the agent's
  100 MB queue, at its usual rates, never holds a batch for a week).

The management server runs `groom` hourly against each database (idempotent, any replica).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from opsmgr.db.model import Database, Retention
from opsmgr.db.schema import maintain_partitions


def batch_record_retention(retention: Retention, database: Database) -> timedelta:
    """How long a committed batch's record is kept: until a replay of the batch can no longer write a row."""
    return timedelta(days=retention.raw_days(database) + retention.partitions_ahead_days + 1)


@dataclass(frozen=True)
class GroomingReport:
    database: Database
    partitions_dropped: tuple[str, ...]
    deleted: dict[str, int] = field(default_factory=dict)  # table -> rows deleted


def _count(status: str) -> int:
    return int(status.rsplit(maxsplit=1)[-1])


async def groom(conn: asyncpg.Connection, database: Database, retention: Retention,
                *, now: datetime | None = None) -> GroomingReport:
    """Drop expired partitions and delete what is past its retention in `database`."""
    moment = now or datetime.now(UTC)
    partitions = await maintain_partitions(conn, database, retention, now=moment)
    deleted: dict[str, int] = {}
    batches_before = moment - batch_record_retention(retention, database)
    deleted["committed_batches"] = _count(await conn.execute(
        "DELETE FROM committed_batches WHERE committed_at < $1", batches_before))
    if database is Database.OPERATIONAL:
        cutoff = moment - timedelta(days=retention.operational_days)
        deleted["alerts"] = _count(await conn.execute(
            "DELETE FROM alerts WHERE resolution_state >= 254 AND coalesce(resolved_at, modified_at) < $1", cutoff))
        deleted["alert_storms"] = _count(await conn.execute(
            """DELETE FROM alert_storms s
               WHERE s.resolution_state >= 254 AND coalesce(s.resolved_at, s.modified_at) < $1
               AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.storm_id = s.storm_id)""", cutoff))
        deleted["notification_outbox"] = _count(await conn.execute(
            "DELETE FROM notification_outbox WHERE status <> 'pending' AND updated_at < $1", cutoff))
    else:
        alerts_before = moment - timedelta(days=retention.alert_days)
        deleted["alerts"] = _count(await conn.execute(
            "DELETE FROM alerts WHERE resolution_state >= 254 AND coalesce(resolved_at, modified_at) < $1",
            alerts_before))
        aggregates_before = moment - timedelta(days=retention.warehouse_aggregated_days)
        for table, column in (("performance_hourly", "hour"), ("state_hourly", "hour"),
                              ("performance_daily", "day"), ("state_daily", "day")):
            deleted[table] = _count(await conn.execute(
                f"DELETE FROM {table} WHERE {column} < $1", aggregates_before))  # noqa: S608
        raw_before = moment - timedelta(days=retention.warehouse_raw_days)
        deleted["aggregation_dirty_hours"] = _count(await conn.execute(
            "DELETE FROM aggregation_dirty_hours WHERE hour < $1", raw_before))
    return GroomingReport(database, partitions.dropped, deleted)
