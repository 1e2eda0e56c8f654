"""The console's reads of the operational DB and the warehouse, and its one write (an alert's resolution state,
through the alert lifecycle's own rules). Thin: rows in, plain values out; views.py decides what they mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from opsmgr.console.views import MonitorState, Resolution, TimeRange
from opsmgr.db.alert_lifecycle import StateChangeResult, SubjectKind, set_resolution_state

RECENT_EVENTS = 50
MAX_POINTS = 5000  # a chart wider than this many points draws nothing a person can tell apart
ALERT_LIMIT = 500


@dataclass
class Databases:
    operational: asyncpg.Pool
    warehouse: asyncpg.Pool

    @classmethod
    async def open(cls, operational_dsn: str, warehouse_dsn: str, size: int) -> Databases:
        """Pools that connect on first use: the console starts (and answers /healthz) before the group's databases
        exist, and its pages say which database is not answering until they do."""
        operational = await asyncpg.create_pool(operational_dsn, min_size=0, max_size=size)
        try:
            warehouse = await asyncpg.create_pool(warehouse_dsn, min_size=0, max_size=size)
        except BaseException:
            await operational.close()
            raise
        return cls(operational, warehouse)

    async def close(self) -> None:
        await self.operational.close()
        await self.warehouse.close()


async def monitor_states(db: Databases, agents: Sequence[str]) -> dict[str, list[MonitorState]]:
    """Each monitor's latest state, per agent (FQDN)."""
    rows = await db.operational.fetch(
        """SELECT DISTINCT ON (agent, object_key, monitor) agent, object_key, monitor, new_state, changed_at
           FROM state_changes WHERE agent = any($1::text[])
           ORDER BY agent, object_key, monitor, changed_at DESC""", list(agents))
    found: dict[str, list[MonitorState]] = {}
    for row in rows:
        found.setdefault(row["agent"], []).append(
            MonitorState(row["object_key"], row["monitor"], int(row["new_state"]), row["changed_at"]))
    return found


async def recent_events(db: Databases, agent: str) -> list[dict[str, Any]]:
    rows = await db.operational.fetch(
        """SELECT logged_at, object_key, channel, source, number, level, description FROM events
           WHERE agent = $1 ORDER BY logged_at DESC LIMIT $2""", agent, RECENT_EVENTS)
    return [dict(row) for row in rows]


async def alerts(db: Databases, *, active_only: bool, agent: str | None = None) -> list[dict[str, Any]]:
    rows = await db.operational.fetch(
        """SELECT alert_id, agent, object_key, source, name, description, severity, priority, resolution_state,
                  repeat_count, raised_at, last_raised_at, resolved_at, modified_at
           FROM alerts WHERE (NOT $1 OR resolution_state < 254) AND ($2::text IS NULL OR agent = $2)
           ORDER BY resolution_state < 254 DESC, severity DESC, last_raised_at DESC LIMIT $3""",
        active_only, agent, ALERT_LIMIT)
    return [dict(row) for row in rows]


async def set_alert_state(db: Databases, alert_id: UUID, target: int) -> StateChangeResult:
    async with db.operational.acquire() as conn:
        return await set_resolution_state(conn, SubjectKind.ALERT, alert_id, target)


@dataclass(frozen=True)
class Counter:
    object_key: str
    object_name: str
    counter_name: str
    instance_name: str

    @property
    def key(self) -> str:
        return "\x1f".join((self.object_key, self.object_name, self.counter_name, self.instance_name))

    @property
    def label(self) -> str:
        instance = f" ({self.instance_name})" if self.instance_name else ""
        return f"{self.object_name} \\ {self.counter_name}{instance}"

    @classmethod
    def from_key(cls, key: str) -> Counter | None:
        parts = key.split("\x1f")
        return cls(*parts) if len(parts) == 4 else None


async def counters(db: Databases, agent: str) -> list[Counter]:
    """The performance series an agent sent: raw ones in the operational DB, older ones in the warehouse."""
    found: set[Counter] = set()
    query = """SELECT DISTINCT object_key, object_name, counter_name, instance_name FROM {table} WHERE agent = $1"""
    for pool, table in ((db.operational, "performance_samples"), (db.warehouse, "performance_hourly")):
        for row in await pool.fetch(query.format(table=table), agent):
            found.add(Counter(row["object_key"], row["object_name"], row["counter_name"], row["instance_name"]))
    return sorted(found, key=lambda c: (c.label, c.object_key))


async def series(db: Databases, agent: str, counter: Counter, window: TimeRange) -> list[tuple[datetime, float]]:
    """The points of one counter in the window: raw samples, or the warehouse's time-weighted averages."""
    args = (agent, counter.object_key, counter.object_name, counter.counter_name, counter.instance_name,
            window.start, window.end, MAX_POINTS)
    where = """agent = $1 AND object_key = $2 AND object_name = $3 AND counter_name = $4 AND instance_name = $5"""
    if window.resolution is Resolution.RAW:
        # The newest MAX_POINTS, read back in time order.
        rows = await db.operational.fetch(
            f"""SELECT * FROM (SELECT sampled_at AS at, value FROM performance_samples WHERE {where}
                AND sampled_at >= $6 AND sampled_at <= $7 ORDER BY sampled_at DESC LIMIT $8) newest
                ORDER BY at""", *args)  # noqa: S608  (constant clauses; values are parameters)
    else:
        table, column = (("performance_hourly", "hour") if window.resolution is Resolution.HOURLY
                         else ("performance_daily", "day"))
        rows = await db.warehouse.fetch(
            f"""SELECT {column} AS at, average AS value FROM {table} WHERE {where}
                AND {column} >= $6 AND {column} <= $7 ORDER BY {column} LIMIT $8""", *args)  # noqa: S608
    return [(row["at"], float(row["value"])) for row in rows]
