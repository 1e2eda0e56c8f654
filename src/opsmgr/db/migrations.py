"""The versioned schema of both databases, and the pure decision of which migrations a database still needs.

A released migration is never edited: its checksum is recorded when applied and checked on every run. Change the
schema by appending a migration.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opsmgr.db.model import Database


class SchemaMismatch(RuntimeError):
    """The database's recorded schema cannot be brought to this opsmgr's schema by appending migrations."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    database: str


SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    database text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# Shared by both databases: batch bookkeeping, the late-data counter and the daily-partitioned raw tables.
_COMMON_V1 = """
CREATE TABLE committed_batches (
    agent text NOT NULL,
    epoch uuid NOT NULL,
    batch_seq bigint NOT NULL,
    lane text NOT NULL CHECK (lane IN ('priority', 'bulk')),
    items_written integer NOT NULL,
    items_dropped integer NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, epoch, batch_seq)
);
CREATE INDEX committed_batches_committed_at ON committed_batches (committed_at);

CREATE TABLE late_data_drops (
    kind text NOT NULL,
    reason text NOT NULL,
    dropped bigint NOT NULL,
    first_dropped_at timestamptz NOT NULL DEFAULT now(),
    last_dropped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, reason)
);

CREATE TABLE events (
    agent text NOT NULL,
    logged_at timestamptz NOT NULL,
    object_key text NOT NULL,
    channel text NOT NULL,
    source text NOT NULL,
    number integer NOT NULL,
    level smallint NOT NULL CHECK (level BETWEEN 1 AND 5),
    description text NOT NULL,
    batch_epoch uuid NOT NULL,
    batch_seq bigint NOT NULL,
    item_no integer NOT NULL
) PARTITION BY RANGE (logged_at);

CREATE TABLE performance_samples (
    agent text NOT NULL,
    sampled_at timestamptz NOT NULL,
    object_key text NOT NULL,
    object_name text NOT NULL,
    counter_name text NOT NULL,
    instance_name text NOT NULL,
    value double precision NOT NULL,
    batch_epoch uuid NOT NULL,
    batch_seq bigint NOT NULL,
    item_no integer NOT NULL
) PARTITION BY RANGE (sampled_at);

CREATE TABLE state_changes (
    agent text NOT NULL,
    changed_at timestamptz NOT NULL,
    object_key text NOT NULL,
    monitor text NOT NULL,
    old_state smallint NOT NULL CHECK (old_state BETWEEN 0 AND 3),
    new_state smallint NOT NULL CHECK (new_state BETWEEN 0 AND 3),
    batch_epoch uuid NOT NULL,
    batch_seq bigint NOT NULL,
    item_no integer NOT NULL
) PARTITION BY RANGE (changed_at);
"""

# change_xid is the id of the transaction that last changed the row: the warehouse sync's watermark.
_ALERT_COLUMNS = """
    alert_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent text NOT NULL,
    object_key text NOT NULL,
    source text NOT NULL,
    name text NOT NULL,
    description text NOT NULL,
    severity smallint NOT NULL CHECK (severity BETWEEN 0 AND 2),
    priority smallint NOT NULL CHECK (priority BETWEEN 0 AND 2),
    resolution_state smallint NOT NULL DEFAULT 0 CHECK (resolution_state BETWEEN 0 AND 255),
    repeat_count integer NOT NULL DEFAULT 0,
    raised_at timestamptz NOT NULL,
    last_raised_at timestamptz NOT NULL,
    resolved_at timestamptz,
    modified_at timestamptz NOT NULL DEFAULT now(),
    change_xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)
"""

OPERATIONAL_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "batches, raw data, alerts and discovery", _COMMON_V1 + f"""
-- The console asks for one agent's recent data.
CREATE INDEX events_agent_logged_at ON events (agent, logged_at);
CREATE INDEX performance_samples_agent_sampled_at ON performance_samples (agent, sampled_at);
CREATE INDEX state_changes_agent_changed_at ON state_changes (agent, changed_at);
CREATE TABLE alerts ({_ALERT_COLUMNS});
-- One active alert per key; a new occurrence while active bumps repeat_count (ON CONFLICT infers this index).
CREATE UNIQUE INDEX alerts_one_active_per_key ON alerts (agent, object_key, source) WHERE resolution_state < 254;
CREATE INDEX alerts_change_xid ON alerts (change_xid);

CREATE TABLE discovered_objects (
    agent text NOT NULL,
    object_key text NOT NULL,
    class_name text NOT NULL,
    display_name text NOT NULL,
    properties jsonb NOT NULL DEFAULT '{{}}',
    discovered_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    PRIMARY KEY (agent, object_key)
);
"""),
    Migration(2, "alert storms and the notification outbox", """
-- A burst of one alert (same source) across many agents, grouped under one parent; members keep their own rows.
CREATE TABLE alert_storms (
    storm_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source text NOT NULL,
    name text NOT NULL,
    severity smallint NOT NULL CHECK (severity BETWEEN 0 AND 2),
    priority smallint NOT NULL CHECK (priority BETWEEN 0 AND 2),
    resolution_state smallint NOT NULL DEFAULT 0 CHECK (resolution_state BETWEEN 0 AND 255),
    opened_at timestamptz NOT NULL,
    last_joined_at timestamptz NOT NULL,
    resolved_at timestamptz,
    modified_at timestamptz NOT NULL DEFAULT now(),
    change_xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)
);
CREATE UNIQUE INDEX alert_storms_one_active_per_source ON alert_storms (source) WHERE resolution_state < 254;
CREATE INDEX alert_storms_change_xid ON alert_storms (change_xid);
ALTER TABLE alerts ADD COLUMN storm_id uuid REFERENCES alert_storms (storm_id) ON DELETE SET NULL;
CREATE INDEX alerts_storm_id ON alerts (storm_id) WHERE storm_id IS NOT NULL;
-- Storm detection asks for the active alerts of one source raised recently.
CREATE INDEX alerts_active_source_raised_at ON alerts (source, raised_at) WHERE resolution_state < 254;
-- Grooming asks for inactive alerts by age.
CREATE INDEX alerts_inactive_resolved_at ON alerts (resolved_at) WHERE resolution_state >= 254;

-- One row per (target, alert or storm): the newest version to deliver and what was delivered, so a restart
-- neither loses nor repeats a notification.
CREATE TABLE notification_outbox (
    target text NOT NULL,
    subject_id uuid NOT NULL,
    payload jsonb NOT NULL,
    fingerprint text NOT NULL,
    version bigint NOT NULL,  -- change_xid of the snapshot, so a slower scan never overwrites a newer one
    delivered_fingerprint text,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'abandoned')),
    refresh boolean NOT NULL DEFAULT false,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, subject_id)
);
CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at)
    WHERE status = 'pending' OR (status = 'delivered' AND refresh);

CREATE TABLE notification_watermarks (
    source text PRIMARY KEY,
    watermark bigint NOT NULL,
    scanned_at timestamptz NOT NULL DEFAULT now()
);
"""),
    Migration(3, "agent presence shared by the management servers", """
-- Which server holds each agent's stream and its last heartbeat, written at most every few seconds per server,
-- so the server that watches an agent connected elsewhere (or to nobody) knows when it last spoke.
CREATE TABLE agent_presence (
    agent text PRIMARY KEY,
    server text NOT NULL,
    session_id text NOT NULL,
    connected boolean NOT NULL,
    connected_at timestamptz NOT NULL,
    last_heartbeat_at timestamptz,
    goodbye_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Watchers read what changed since their last read.
CREATE INDEX agent_presence_updated_at ON agent_presence (updated_at);
"""),
)

WAREHOUSE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "batches, raw data and alert history", _COMMON_V1 + f"""
-- Aggregation and reports scan time ranges of every agent: BRIN costs next to nothing to keep up at ingest.
CREATE INDEX events_logged_at ON events USING brin (logged_at);
CREATE INDEX performance_samples_sampled_at ON performance_samples USING brin (sampled_at);
CREATE INDEX state_changes_changed_at ON state_changes USING brin (changed_at);
CREATE TABLE alerts ({_ALERT_COLUMNS},
    synced_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_raised_at ON alerts (raised_at);

CREATE TABLE alert_sync_watermarks (
    source text PRIMARY KEY,
    watermark bigint NOT NULL,
    synced_at timestamptz NOT NULL DEFAULT now()
);
"""),
    Migration(2, "hourly and daily aggregates of performance and state", """
-- Time-weighted: each value holds until the next sample (at most max_hold), clipped to the hour.
CREATE TABLE performance_hourly (
    agent text NOT NULL,
    object_key text NOT NULL,
    object_name text NOT NULL,
    counter_name text NOT NULL,
    instance_name text NOT NULL,
    hour timestamptz NOT NULL,
    sample_count integer NOT NULL,
    min_value double precision NOT NULL,
    max_value double precision NOT NULL,
    average double precision NOT NULL,
    covered_seconds double precision NOT NULL,
    aggregated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, object_key, object_name, counter_name, instance_name, hour)
);
CREATE INDEX performance_hourly_hour ON performance_hourly (hour);

CREATE TABLE performance_daily (LIKE performance_hourly INCLUDING DEFAULTS);
ALTER TABLE performance_daily RENAME COLUMN hour TO day;
ALTER TABLE performance_daily ADD PRIMARY KEY (agent, object_key, object_name, counter_name, instance_name, day);
CREATE INDEX performance_daily_day ON performance_daily (day);

-- Seconds in each state; the percentages are derived so they always add up to 100.
CREATE TABLE state_hourly (
    agent text NOT NULL,
    object_key text NOT NULL,
    monitor text NOT NULL,
    hour timestamptz NOT NULL,
    changes integer NOT NULL,
    unknown_seconds double precision NOT NULL,
    healthy_seconds double precision NOT NULL,
    warning_seconds double precision NOT NULL,
    critical_seconds double precision NOT NULL,
    covered_seconds double precision GENERATED ALWAYS AS
        (unknown_seconds + healthy_seconds + warning_seconds + critical_seconds) STORED,
    healthy_percent double precision GENERATED ALWAYS AS (100 * healthy_seconds /
        nullif(unknown_seconds + healthy_seconds + warning_seconds + critical_seconds, 0)) STORED,
    warning_percent double precision GENERATED ALWAYS AS (100 * warning_seconds /
        nullif(unknown_seconds + healthy_seconds + warning_seconds + critical_seconds, 0)) STORED,
    critical_percent double precision GENERATED ALWAYS AS (100 * critical_seconds /
        nullif(unknown_seconds + healthy_seconds + warning_seconds + critical_seconds, 0)) STORED,
    unknown_percent double precision GENERATED ALWAYS AS (100 * unknown_seconds /
        nullif(unknown_seconds + healthy_seconds + warning_seconds + critical_seconds, 0)) STORED,
    aggregated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, object_key, monitor, hour)
);
CREATE INDEX state_hourly_hour ON state_hourly (hour);

CREATE TABLE state_daily (LIKE state_hourly INCLUDING DEFAULTS INCLUDING GENERATED);
ALTER TABLE state_daily RENAME COLUMN hour TO day;
ALTER TABLE state_daily ADD PRIMARY KEY (agent, object_key, monitor, day);
CREATE INDEX state_daily_day ON state_daily (day);

-- Hours already aggregated that late data touched; the writer marks them in the transaction of the data.
CREATE TABLE aggregation_dirty_hours (
    kind text NOT NULL CHECK (kind IN ('performance', 'state')),
    agent text NOT NULL,
    hour timestamptz NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, agent, hour)
);

-- Every hour before aggregated_until has been aggregated at least once.
CREATE TABLE aggregation_watermarks (
    kind text PRIMARY KEY CHECK (kind IN ('performance', 'state')),
    aggregated_until timestamptz NOT NULL,
    aggregated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_resolved_at ON alerts (resolved_at) WHERE resolution_state >= 254;
"""),
    Migration(3, "the state in effect at the end of each aggregated hour and day", """
-- The next hour starts from it, so a monitor that never changes keeps getting hourly rows.
ALTER TABLE state_hourly ADD COLUMN end_state smallint NOT NULL DEFAULT 0 CHECK (end_state BETWEEN 0 AND 3);
ALTER TABLE state_daily ADD COLUMN end_state smallint NOT NULL DEFAULT 0 CHECK (end_state BETWEEN 0 AND 3);
"""),
)

MIGRATIONS: Mapping[Database, tuple[Migration, ...]] = {
    Database.OPERATIONAL: OPERATIONAL_MIGRATIONS,
    Database.WAREHOUSE: WAREHOUSE_MIGRATIONS,
}


def pending_migrations(database: Database, available: Sequence[Migration],
                       applied: Sequence[AppliedMigration]) -> list[Migration]:
    """The migrations `database` still needs, in order; raises SchemaMismatch when appending cannot get there."""
    known = {migration.version: migration for migration in available}
    for row in applied:
        if row.database != database.value:
            raise SchemaMismatch(
                f"the {database} DSN points at a database that holds the {row.database} schema "
                f"(schema_migrations version {row.version}): give the {database} its own database")
        migration = known.get(row.version)
        if migration is None:
            raise SchemaMismatch(
                f"the {database} database is at schema version {row.version} ('{row.name}'), newer than this "
                f"opsmgr knows (up to {max(known, default=0)}): upgrade opsmgr before migrating")
        if migration.checksum != row.checksum:
            raise SchemaMismatch(
                f"{database} migration {row.version} ('{row.name}') differs from what was applied (checksum "
                f"{row.checksum[:12]} in the database, {migration.checksum[:12]} here): restore it and put the "
                "change in a new migration")
    done = {row.version for row in applied}
    return sorted((m for m in available if m.version not in done), key=lambda m: m.version)
