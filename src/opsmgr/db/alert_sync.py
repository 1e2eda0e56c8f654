"""Copy alerts changed in the operational DB to the warehouse's alert history (DESIGN.md section 4).

The watermark is a transaction id, not a time: every alert row carries the id of the transaction that last
changed it, and a sync reads in one snapshot everything changed by transactions at or after the previous
snapshot's oldest running one. A transaction still running during a sync is therefore read by the next one, and
re-reading a row is harmless because the warehouse keeps the newest version of each alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

WATERMARK_SOURCE = "operational"

_COLUMNS = ("alert_id", "agent", "object_key", "source", "name", "description", "severity", "priority",
            "resolution_state", "repeat_count", "raised_at", "last_raised_at", "resolved_at", "modified_at",
            "change_xid")


@dataclass(frozen=True)
class AlertSyncResult:
    copied: int
    watermark: int


async def sync_alerts_to_warehouse(operational: asyncpg.Connection, warehouse: asyncpg.Connection,
                                   *, chunk_rows: int = 1000) -> AlertSyncResult:
    """Copy every alert changed since the warehouse's watermark; safe to run again or concurrently."""
    previous = await warehouse.fetchval(
        "SELECT watermark FROM alert_sync_watermarks WHERE source = $1", WATERMARK_SOURCE) or 0
    copied = 0
    async with operational.transaction(isolation="repeatable_read", readonly=True):
        # First statement: fixes the snapshot whose oldest running transaction becomes the next watermark.
        horizon = await operational.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        chunk: list[tuple[Any, ...]] = []
        async for row in operational.cursor(
                f"SELECT {', '.join(_COLUMNS)} FROM alerts WHERE change_xid >= $1", previous,  # noqa: S608
                prefetch=chunk_rows):
            chunk.append(tuple(row))
            if len(chunk) >= chunk_rows:
                copied += await _upsert(warehouse, chunk)
                chunk = []
        copied += await _upsert(warehouse, chunk)
    await warehouse.execute(
        """INSERT INTO alert_sync_watermarks AS w (source, watermark) VALUES ($1, $2)
           ON CONFLICT (source) DO UPDATE SET watermark = greatest(w.watermark, excluded.watermark),
                                              synced_at = now()""",
        WATERMARK_SOURCE, horizon)
    return AlertSyncResult(copied, max(previous, horizon))


_UPSERT = f"""
INSERT INTO alerts AS w ({', '.join(_COLUMNS)}) VALUES ({', '.join(f'${n}' for n in range(1, len(_COLUMNS) + 1))})
ON CONFLICT (alert_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS[1:])}, synced_at = now()
WHERE w.change_xid <= excluded.change_xid
"""  # noqa: S608


async def _upsert(warehouse: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> int:
    if rows:
        await warehouse.executemany(_UPSERT, rows)
    return len(rows)
