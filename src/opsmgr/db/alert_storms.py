"""Alert storm protection: a burst of one alert across many agents becomes one storm that lists every agent.

A storm is keyed by the alert's source (the rule or monitor): when `threshold_agents` distinct agents raise it
within any `window`, their active alerts are grouped under a new storm, and later occurrences join it while it is
active. Members keep their own rows (every agent stays listed, acknowledged and resolved on its own); people and
notifications see one storm. A storm resolves by itself once none of its members is active.

The decision is pure (`plan_storms`); `group_alert_storms` gathers, decides and writes in one transaction that
an advisory lock serialises across management servers. Run it before the notification scan, every few seconds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from opsmgr.db.model import AlertPriority, AlertSeverity
from opsmgr.db.schema import LOCK_NAMESPACE

STORM_LOCK = 3


@dataclass(frozen=True)
class StormPolicy:
    threshold_agents: int = 10  # distinct agents, so one noisy agent repeating itself is never a storm
    window: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        if self.threshold_agents < 2:
            raise ValueError(f"storm threshold_agents is {self.threshold_agents}: a storm spans 2 agents or more")
        if self.window <= timedelta(0):
            raise ValueError(f"storm window is {self.window}: give a positive duration")


@dataclass(frozen=True)
class StormCandidate:
    """An active alert that is in no storm yet."""

    alert_id: UUID
    agent: str
    source: str
    name: str
    severity: AlertSeverity
    priority: AlertPriority
    raised_at: datetime


@dataclass(frozen=True)
class NewStorm:
    source: str
    name: str
    severity: AlertSeverity
    priority: AlertPriority
    opened_at: datetime
    members: tuple[UUID, ...]


@dataclass(frozen=True)
class StormPlan:
    opens: tuple[NewStorm, ...]
    joins: Mapping[UUID, tuple[UUID, ...]]  # storm id -> alerts joining it


def burst_reached(candidates: Sequence[StormCandidate], policy: StormPolicy) -> bool:
    """Whether some span of `policy.window` holds occurrences from `threshold_agents` distinct agents."""
    ordered = sorted(candidates, key=lambda c: c.raised_at)
    counts: dict[str, int] = defaultdict(int)
    start = 0
    for candidate in ordered:
        counts[candidate.agent] += 1
        while candidate.raised_at - ordered[start].raised_at > policy.window:
            leaving = ordered[start].agent
            counts[leaving] -= 1
            if not counts[leaving]:
                del counts[leaving]
            start += 1
        if len(counts) >= policy.threshold_agents:
            return True
    return False


def plan_storms(candidates: Sequence[StormCandidate], active_storms: Mapping[str, UUID],
                policy: StormPolicy) -> StormPlan:
    """Which candidates join an active storm of their source, and which sources start one."""
    by_source: dict[str, list[StormCandidate]] = defaultdict(list)
    for candidate in candidates:
        by_source[candidate.source].append(candidate)
    opens: list[NewStorm] = []
    joins: dict[UUID, tuple[UUID, ...]] = {}
    for source in sorted(by_source):
        group = sorted(by_source[source], key=lambda c: (c.raised_at, c.agent))
        members = tuple(c.alert_id for c in group)
        if source in active_storms:
            joins[active_storms[source]] = members
        elif burst_reached(group, policy):
            opens.append(NewStorm(source, group[0].name, max(c.severity for c in group),
                                  max(c.priority for c in group), group[0].raised_at, members))
    return StormPlan(tuple(opens), joins)


@dataclass(frozen=True)
class StormReport:
    opened: int
    joined: int
    resolved: int


async def group_alert_storms(conn: asyncpg.Connection, policy: StormPolicy = StormPolicy(),
                             *, now: datetime | None = None) -> StormReport:
    """Group recent active alerts into storms and resolve storms with no active member left."""
    moment = now or datetime.now(UTC)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, STORM_LOCK)
        rows = await conn.fetch(
            """SELECT alert_id, agent, source, name, severity, priority, raised_at FROM alerts
               WHERE resolution_state < 254 AND storm_id IS NULL AND raised_at >= $1""", moment - policy.window)
        candidates = [StormCandidate(r["alert_id"], r["agent"], r["source"], r["name"], AlertSeverity(r["severity"]),
                                     AlertPriority(r["priority"]), r["raised_at"]) for r in rows]
        active = {r["source"]: r["storm_id"] for r in await conn.fetch(
            "SELECT source, storm_id FROM alert_storms WHERE resolution_state < 254")}
        plan = plan_storms(candidates, active, policy)
        joined = 0
        for storm in plan.opens:
            storm_id = await conn.fetchval(
                """INSERT INTO alert_storms (source, name, severity, priority, opened_at, last_joined_at)
                   VALUES ($1, $2, $3, $4, $5, $5) RETURNING storm_id""",
                storm.source, storm.name, int(storm.severity), int(storm.priority), storm.opened_at)
            joined += await _join(conn, storm_id, storm.members, moment)
        for storm_id, members in plan.joins.items():
            joined += await _join(conn, storm_id, members, moment)
        status = await conn.execute(_RESOLVE_EMPTY_STORMS, moment)
    return StormReport(len(plan.opens), joined, int(status.split()[-1]))


async def _join(conn: asyncpg.Connection, storm_id: UUID, members: Sequence[UUID], moment: datetime) -> int:
    status = await conn.execute(
        """UPDATE alerts SET storm_id = $1, modified_at = now(), change_xid = pg_current_xact_id()::text::bigint
           WHERE alert_id = ANY($2::uuid[]) AND storm_id IS NULL""", storm_id, list(members))
    # The storm changes too (another agent listed), so its notification is sent again.
    await conn.execute(
        """UPDATE alert_storms SET last_joined_at = greatest(last_joined_at, $2), modified_at = now(),
               change_xid = pg_current_xact_id()::text::bigint
           WHERE storm_id = $1""", storm_id, moment)
    return int(status.split()[-1])


_RESOLVE_EMPTY_STORMS = """
UPDATE alert_storms s SET resolution_state = 254, resolved_at = $1, modified_at = now(),
                          change_xid = pg_current_xact_id()::text::bigint
WHERE s.resolution_state < 254
  AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.storm_id = s.storm_id AND a.resolution_state < 254)
"""
