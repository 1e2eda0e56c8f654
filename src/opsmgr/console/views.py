"""What the console shows, decided from plain data (pure): each agent's row and health, filters, the chart's time
range and resolution, and the labels people read. The I/O lives in queries.py (databases) and cluster.py (API).

Health follows the rule of the Agent's `status.health`, opsmgr.db.health_model, shared with the management servers:
the worst of the monitors' latest states, Critical over Warning over Healthy, Unknown (not monitored) skipped; and
Unknown while the agent is not approved, in maintenance or its heartbeat is lost, since its last states can no
longer be trusted. The monitors' states come from the operational DB, where the servers write every change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from opsmgr.api.agent import Approval, Health, HeartbeatState
from opsmgr.db.health_model import HEALTH_OF_STATE, agent_health, worst_of
from opsmgr.db.model import AlertPriority, AlertSeverity, EventLevel, HealthState, ResolutionState


def _approval(text: str) -> Approval:
    try:
        return Approval(text)
    except ValueError:
        return Approval.PENDING  # not a value the API server admits: not approved


def _heartbeat(text: object) -> HeartbeatState | None:
    try:
        return HeartbeatState(str(text)) if text else None
    except ValueError:
        return None


@dataclass(frozen=True)
class MonitorState:
    object_key: str
    monitor: str
    state: int
    changed_at: datetime

    @property
    def health(self) -> str:
        return HEALTH_OF_STATE[HealthState(self.state)].value


@dataclass(frozen=True)
class AgentRow:
    """One line of the agent list (and the head of the agent page)."""

    name: str
    fqdn: str
    placement: str
    approval: str
    health: str
    heartbeat: str
    connection: str
    last_heartbeat: datetime | None
    server: str
    queue_percent: int
    queue_items: int
    evictions: int
    maintenance: bool
    created: str


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def agent_row(body: Mapping[str, Any], monitor_states: Sequence[MonitorState]) -> AgentRow:
    """An Agent resource (as the API server returned it) and its monitors' latest states."""
    metadata, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    queue = status.get("queue") or {}
    approval = str(status.get("approval") or Approval.PENDING.value)
    heartbeat = status.get("heartbeat")
    maintenance = bool(status.get("maintenance"))
    health = agent_health(worst_of(HealthState(m.state) for m in monitor_states), approval=_approval(approval),
                          heartbeat=_heartbeat(heartbeat), in_maintenance=maintenance)
    return AgentRow(
        name=str(metadata.get("name", "")), fqdn=str(spec.get("fqdn", "")), placement=str(spec.get("placement", "")),
        approval=approval, health=health.value, heartbeat=str(heartbeat or "-"),
        connection=str(status.get("connection") or "NeverConnected"),
        last_heartbeat=_parse_time(status.get("lastHeartbeatTime")), server=str(status.get("server") or "-"),
        queue_percent=int(queue.get("percentUsed") or 0), queue_items=int(queue.get("items") or 0),
        evictions=int(queue.get("evictions") or 0), maintenance=maintenance,
        created=str(metadata.get("creationTimestamp", "")))


@dataclass(frozen=True)
class AgentFilter:
    health: str = ""
    connection: str = ""
    approval: str = ""
    text: str = ""

    @classmethod
    def of(cls, query: Mapping[str, str]) -> AgentFilter:
        def pick(key: str, allowed: Iterable[str]) -> str:
            value = query.get(key, "")
            return value if value in allowed else ""

        return cls(health=pick("health", [h.value for h in Health]),
                   connection=pick("connection", ["Connected", "Disconnected", "NeverConnected"]),
                   approval=pick("approval", [a.value for a in Approval]),
                   text=query.get("q", "").strip()[:200])

    def matches(self, row: AgentRow) -> bool:
        text = self.text.lower()
        return ((not self.health or row.health == self.health)
                and (not self.connection or row.connection == self.connection)
                and (not self.approval or row.approval == self.approval)
                and (not text or text in row.name.lower() or text in row.fqdn.lower() or text in row.server.lower()))


def filter_agents(rows: Iterable[AgentRow], wanted: AgentFilter) -> list[AgentRow]:
    severity = {Health.CRITICAL.value: 0, Health.WARNING.value: 1, Health.UNKNOWN.value: 2, Health.HEALTHY.value: 3}
    return sorted((row for row in rows if wanted.matches(row)), key=lambda r: (severity.get(r.health, 4), r.name))


class Resolution(StrEnum):
    RAW = "raw"
    HOURLY = "hourly"
    DAILY = "daily"


RANGES: Mapping[str, timedelta] = {
    "1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(hours=24), "7d": timedelta(days=7),
    "30d": timedelta(days=30), "400d": timedelta(days=400),
}
DEFAULT_RANGE = "6h"


@dataclass(frozen=True)
class TimeRange:
    """The chart's window and which table answers it: raw samples, or the warehouse's hourly or daily averages."""

    name: str
    start: datetime
    end: datetime
    resolution: Resolution

    @classmethod
    def of(cls, range_name: str | None, resolution: str | None, now: datetime | None = None) -> TimeRange:
        end = now or datetime.now(UTC)
        name = range_name if range_name is not None and range_name in RANGES else DEFAULT_RANGE
        span = RANGES[name]
        try:
            chosen = Resolution(resolution) if resolution else default_resolution(span)
        except ValueError:
            chosen = default_resolution(span)
        return cls(name, end - span, end, chosen)


def default_resolution(span: timedelta) -> Resolution:
    if span <= timedelta(hours=24):
        return Resolution.RAW
    return Resolution.HOURLY if span <= timedelta(days=30) else Resolution.DAILY


def chart_series(points: Sequence[tuple[datetime, float]]) -> list[list[float]]:
    """uPlot's columnar data: x in Unix seconds, then the values."""
    return [[moment.timestamp() for moment, _ in points], [value for _, value in points]]


def resolution_state_label(state: int) -> str:
    try:
        return ResolutionState(state).name.title()
    except ValueError:
        return f"Custom {state}"


def severity_label(severity: int) -> str:
    try:
        return AlertSeverity(severity).name.title()
    except ValueError:
        return str(severity)


def priority_label(priority: int) -> str:
    try:
        return AlertPriority(priority).name.title()
    except ValueError:
        return str(priority)


def event_level_label(level: int) -> str:
    try:
        return EventLevel(level).name.title()
    except ValueError:
        return str(level)


def pending(rows: Iterable[AgentRow]) -> list[AgentRow]:
    return sorted((row for row in rows if row.approval == Approval.PENDING), key=lambda r: r.name)


def pack_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """A ManagementPack as the pages list it: its rules, monitors and tasks with what each does."""
    spec = body.get("spec") or {}
    metadata = body.get("metadata") or {}

    def kind_of(item: Mapping[str, Any]) -> str:
        return next((key for key in item if key not in {"name", "displayName", "enabled", "description"}
                     and isinstance(item[key], dict)), "-")

    return {
        "name": metadata.get("name", ""), "version": spec.get("version", ""),
        "group": (spec.get("managementGroupRef") or {}).get("name", ""),
        "rules": [{"name": r.get("name", ""), "kind": kind_of(r), "detail": r.get(kind_of(r), {}),
                   "enabled": r.get("enabled", True)} for r in spec.get("rules") or []],
        "monitors": [{"name": m.get("name", ""), "display": m.get("displayName", ""), "kind": kind_of(m),
                      "detail": {k: v for k, v in m.items() if k not in {"name", "displayName"}}}
                     for m in spec.get("monitors") or []],
        "tasks": [{"name": t.get("name", ""), "detail": {k: v for k, v in t.items() if k != "name"}}
                  for t in spec.get("tasks") or []],
        "ready": next((c.get("status") for c in (body.get("status") or {}).get("conditions") or []
                       if c.get("type") == "Ready"), "-"),
    }
