"""Agent presence shared by the management servers, and the watcher's own alerts (asyncpg).

Each server records the streams it holds (connected, last heartbeat, goodbye) in `agent_presence`, batched; the
server that watches an agent reads the rows that changed since its last read. A row written by an older stream
never overwrites one written by a newer stream of the same agent (compared by `connected_at`), so a late flush
from the server an agent just left cannot mark it disconnected from the server it moved to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from opsmgr.db.model import AlertPriority, AlertSeverity


@dataclass(frozen=True)
class PresenceRow:
    agent: str
    server: str
    session_id: str
    connected: bool
    connected_at: datetime
    last_heartbeat_at: datetime | None
    goodbye_at: datetime | None
    updated_at: datetime | None = None  # set by the database


async def record_presence(conn: asyncpg.Connection, rows: Sequence[PresenceRow]) -> None:
    """Upsert the rows in one statement; a row of an older stream than the stored one changes nothing."""
    if not rows:
        return
    await conn.execute(_RECORD, [r.agent for r in rows], [r.server for r in rows], [r.session_id for r in rows],
                       [r.connected for r in rows], [r.connected_at for r in rows],
                       [r.last_heartbeat_at for r in rows], [r.goodbye_at for r in rows])


async def presence_changed_since(conn: asyncpg.Connection, since: datetime | None) -> list[PresenceRow]:
    """Rows updated after `since` (every row when None), oldest change first."""
    records = await conn.fetch(
        "SELECT * FROM agent_presence WHERE $1::timestamptz IS NULL OR updated_at > $1 ORDER BY updated_at", since)
    return [PresenceRow(r["agent"], r["server"], r["session_id"], r["connected"], r["connected_at"],
                        r["last_heartbeat_at"], r["goodbye_at"], r["updated_at"]) for r in records]


async def disown_presence(conn: asyncpg.Connection, server: str, live_sessions: Sequence[str]) -> None:
    """Mark disconnected the rows that name `server` but none of its live streams (left by a server killed earlier)."""
    await conn.execute("""UPDATE agent_presence SET connected = false, updated_at = clock_timestamp()
                          WHERE server = $1 AND connected AND NOT session_id = any($2::text[])""",
                       server, list(live_sessions))


async def raise_agent_alert(conn: asyncpg.Connection, *, agent: str, object_key: str, source: str, name: str,
                            description: str, severity: AlertSeverity, priority: AlertPriority,
                            raised_at: datetime) -> bool:
    """Open the alert unless one is active for its key; True when this call opened it."""
    status = await conn.execute(_RAISE, agent, object_key, source, name, description, int(severity), int(priority),
                                raised_at)
    return str(status).split()[-1] == "1"


async def resolve_agent_alert(conn: asyncpg.Connection, *, agent: str, object_key: str, source: str,
                              resolved_at: datetime) -> bool:
    """Resolve (254) the active alert of this key; True when there was one."""
    status = await conn.execute(_RESOLVE, agent, object_key, source, resolved_at)
    return str(status).split()[-1] != "0"


async def active_alerts(conn: asyncpg.Connection, sources: Sequence[str]) -> dict[str, set[str]]:
    """Active alerts of these sources: agent -> sources, so a server taking agents over knows what is open."""
    found: dict[str, set[str]] = {}
    for record in await conn.fetch(
            "SELECT agent, source FROM alerts WHERE source = any($1::text[]) AND resolution_state < 254",
            list(sources)):
        found.setdefault(record["agent"], set()).add(record["source"])
    return found


_RECORD = """
INSERT INTO agent_presence AS p (agent, server, session_id, connected, connected_at, last_heartbeat_at, goodbye_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::timestamptz[], $6::timestamptz[],
                     $7::timestamptz[])
ON CONFLICT (agent) DO UPDATE SET
    server = excluded.server, session_id = excluded.session_id, connected = excluded.connected,
    connected_at = excluded.connected_at, goodbye_at = excluded.goodbye_at,
    last_heartbeat_at = greatest(p.last_heartbeat_at, excluded.last_heartbeat_at),
    updated_at = clock_timestamp()
WHERE p.session_id = excluded.session_id OR p.connected_at <= excluded.connected_at
"""

# Opened only when no alert of the key is active: a second watcher (a hand-over in flight) adds nothing.
_RAISE = """
INSERT INTO alerts (agent, object_key, source, name, description, severity, priority, raised_at, last_raised_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
ON CONFLICT (agent, object_key, source) WHERE resolution_state < 254 DO NOTHING
"""

_RESOLVE = """
UPDATE alerts SET resolution_state = 254, resolved_at = $4,
                  modified_at = now(), change_xid = pg_current_xact_id()::text::bigint
WHERE agent = $1 AND object_key = $2 AND source = $3 AND resolution_state < 254
"""
