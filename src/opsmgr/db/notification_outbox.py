"""The notification outbox in the operational DB: what each target must still be told, surviving restarts.

One row per (target, alert or storm) holds the newest version to deliver and what was delivered. Changes are
found like the warehouse sync finds them (transaction-id watermark, see alert_sync), so nothing is missed between
two scans and a rescan is harmless. Deliveries are claimed with a lease (next_attempt_at pushed ahead), so several
management servers share the work and one that dies mid-send is replaced when the lease runs out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from opsmgr.db.alert_lifecycle import SubjectKind

WATERMARK_SOURCE = "alerts"


@dataclass(frozen=True)
class AlertSnapshot:
    """An alert or storm as notifications describe it; a storm lists its members' agents."""

    kind: SubjectKind
    subject_id: UUID
    version: int
    agents: tuple[str, ...]
    object_key: str
    source: str
    name: str
    description: str
    severity: int
    priority: int
    resolution_state: int
    repeat_count: int
    raised_at: datetime
    resolved_at: datetime | None
    in_storm: bool


@dataclass(frozen=True)
class Enqueued:
    target: str
    subject_id: UUID
    payload: dict[str, Any]
    fingerprint: str
    version: int
    refresh: bool  # delivered again periodically while firing (Alertmanager forgets alerts not re-sent)


@dataclass(frozen=True)
class OutboxEntry:
    target: str
    subject_id: UUID
    payload: dict[str, Any]
    fingerprint: str
    status: str
    attempts: int


async def scan_alert_changes(conn: asyncpg.Connection) -> tuple[list[AlertSnapshot], int, int]:
    """Alerts and storms changed since the last scan: (snapshots, previous watermark, next watermark)."""
    previous = await conn.fetchval(
        "SELECT watermark FROM notification_watermarks WHERE source = $1", WATERMARK_SOURCE) or 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        horizon = await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        alerts = await conn.fetch(
            """SELECT alert_id, change_xid, agent, object_key, source, name, description, severity, priority,
                      resolution_state, repeat_count, raised_at, resolved_at, storm_id IS NOT NULL AS in_storm
               FROM alerts WHERE change_xid >= $1 ORDER BY change_xid""", previous)
        storms = await conn.fetch(
            """SELECT s.storm_id, s.change_xid, s.source, s.name, s.severity, s.priority, s.resolution_state,
                      s.opened_at, s.resolved_at,
                      coalesce(array_agg(DISTINCT a.agent ORDER BY a.agent) FILTER (WHERE a.agent IS NOT NULL),
                               '{}') AS agents,
                      count(a.alert_id) AS members
               FROM alert_storms s LEFT JOIN alerts a ON a.storm_id = s.storm_id
               WHERE s.change_xid >= $1 GROUP BY s.storm_id ORDER BY s.change_xid""", previous)
    snapshots = [AlertSnapshot(SubjectKind.ALERT, r["alert_id"], r["change_xid"], (r["agent"],), r["object_key"],
                               r["source"], r["name"], r["description"], r["severity"], r["priority"],
                               r["resolution_state"], r["repeat_count"], r["raised_at"], r["resolved_at"],
                               r["in_storm"]) for r in alerts]
    snapshots += [AlertSnapshot(SubjectKind.STORM, r["storm_id"], r["change_xid"], tuple(r["agents"]), "",
                                r["source"], r["name"], f"{r['name']} on {r['members']} agents", r["severity"],
                                r["priority"], r["resolution_state"], int(r["members"]), r["opened_at"],
                                r["resolved_at"], False) for r in storms]
    return snapshots, previous, max(previous, horizon)


async def enqueue(conn: asyncpg.Connection, entries: Sequence[Enqueued], watermark: int) -> int:
    """Record the notifications to send and advance the scan watermark; returns rows newly pending."""
    async with conn.transaction():
        pending = 0
        for entry in sorted(entries, key=lambda e: (e.target, e.subject_id)):
            status = await conn.execute(_ENQUEUE, entry.target, entry.subject_id, json.dumps(entry.payload),
                                        entry.fingerprint, entry.version, entry.refresh)
            pending += int(status.rsplit(maxsplit=1)[-1])
        await conn.execute(
            """INSERT INTO notification_watermarks AS w (source, watermark) VALUES ($1, $2)
               ON CONFLICT (source) DO UPDATE SET watermark = greatest(w.watermark, excluded.watermark),
                                                  scanned_at = now()""", WATERMARK_SOURCE, watermark)
    return pending


# A new fingerprint starts a fresh delivery; an older snapshot (a slower scan) never replaces a newer one.
_ENQUEUE = """
INSERT INTO notification_outbox AS o (target, subject_id, payload, fingerprint, version, refresh)
VALUES ($1, $2, $3::jsonb, $4, $5, $6)
ON CONFLICT (target, subject_id) DO UPDATE SET
    payload = excluded.payload, fingerprint = excluded.fingerprint, version = excluded.version,
    refresh = excluded.refresh, status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL,
    updated_at = now()
WHERE excluded.version > o.version AND excluded.fingerprint <> o.fingerprint
"""


async def claim_due(conn: asyncpg.Connection, targets: Sequence[str], now: datetime, lease: timedelta,
                    limit: int = 100) -> list[OutboxEntry]:
    """Take up to `limit` due deliveries for `targets`, leased to this caller until now + lease."""
    rows = await conn.fetch(
        """UPDATE notification_outbox o SET next_attempt_at = $2::timestamptz + $3::interval
           FROM (SELECT target, subject_id FROM notification_outbox
                 WHERE (status = 'pending' OR (status = 'delivered' AND refresh)) AND next_attempt_at <= $2
                   AND target = ANY($1::text[])
                 ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) due
           WHERE o.target = due.target AND o.subject_id = due.subject_id
           RETURNING o.target, o.subject_id, o.payload, o.fingerprint, o.status, o.attempts""",
        list(targets), now, lease, limit)
    return [OutboxEntry(r["target"], r["subject_id"], json.loads(r["payload"]), r["fingerprint"], r["status"],
                        r["attempts"]) for r in rows]


async def mark_delivered(conn: asyncpg.Connection, entry: OutboxEntry, next_refresh: datetime | None) -> None:
    """The target accepted this version; a firing alert for Alertmanager is due again at `next_refresh`."""
    await conn.execute(
        """UPDATE notification_outbox SET status = 'delivered', delivered_fingerprint = fingerprint, attempts = 0,
               last_error = NULL, next_attempt_at = coalesce($4, next_attempt_at), updated_at = now()
           WHERE target = $1 AND subject_id = $2 AND fingerprint = $3""",
        entry.target, entry.subject_id, entry.fingerprint, next_refresh)


async def mark_failed(conn: asyncpg.Connection, entry: OutboxEntry, error: str, retry_at: datetime | None) -> None:
    """The delivery failed: retry at `retry_at`, or give up (None) when retrying cannot help."""
    await conn.execute(
        """UPDATE notification_outbox SET attempts = attempts + 1, last_error = $4,
               status = CASE WHEN $5::timestamptz IS NULL THEN 'abandoned' ELSE status END,
               next_attempt_at = coalesce($5, next_attempt_at), updated_at = now()
           WHERE target = $1 AND subject_id = $2 AND fingerprint = $3""",
        entry.target, entry.subject_id, entry.fingerprint, error[:2000], retry_at)
