"""The health model (pure): monitor states roll up worst-of into four categories, per object and per agent.

Operations Manager's model: every monitor belongs to one category (Availability, Performance, Configuration,
Security); an object's category is the worst of its monitors in that category, the object's health the worst of
its categories, and the computer (the agent) the worst of the objects it hosts. Worst-of ranks Critical over
Warning over Healthy; Unknown means "not monitored" and is skipped, so one monitor that has not reported yet never
hides a known state, and a category with no monitored member is Unknown.

The Agent's `status.health` comes from `agent_health`, which also applies the facts that make the rollup
untrustworthy (not approved, in maintenance, heartbeat lost); heartbeat and connection stay fields of their own.

It lives beside the data model (opsmgr.db) so that both writers and readers of health share one rule: the
management server that watches an agent writes `status.health` from it, and the console may import it too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from opsmgr.api.agent import Approval, Health, HeartbeatState
from opsmgr.db.model import HealthState, StateChange


class HealthCategory(StrEnum):
    AVAILABILITY = "Availability"
    PERFORMANCE = "Performance"
    CONFIGURATION = "Configuration"
    SECURITY = "Security"


# Every monitor a ManagementPack can declare today samples a performance counter, hence the default.
DEFAULT_CATEGORY = HealthCategory.PERFORMANCE

HEALTH_OF_STATE: Mapping[HealthState, Health] = {
    HealthState.UNKNOWN: Health.UNKNOWN,
    HealthState.HEALTHY: Health.HEALTHY,
    HealthState.WARNING: Health.WARNING,
    HealthState.CRITICAL: Health.CRITICAL,
}


def worst_of(states: Iterable[HealthState]) -> HealthState:
    """Critical over Warning over Healthy; Unknown (not monitored) only when nothing is known."""
    known = [state for state in states if state is not HealthState.UNKNOWN]
    return max(known) if known else HealthState.UNKNOWN


@dataclass(frozen=True)
class ObjectHealth:
    """One monitored object's rollup: each category, then overall."""

    object_key: str
    categories: Mapping[HealthCategory, HealthState]
    overall: HealthState


@dataclass(frozen=True)
class AgentRollup:
    """The agent's computer and everything it hosts: per object, per category across objects, overall."""

    objects: Mapping[str, ObjectHealth]
    categories: Mapping[HealthCategory, HealthState]
    overall: HealthState


@dataclass(frozen=True)
class HealthTransition:
    """What one state change did to its object's and its agent's overall health."""

    object_key: str
    object_before: HealthState
    object_after: HealthState
    agent_before: HealthState
    agent_after: HealthState

    @property
    def agent_changed(self) -> bool:
        return self.agent_before is not self.agent_after


@dataclass(frozen=True)
class _MonitorReading:
    state: HealthState
    changed_at: datetime


@dataclass
class HealthModel:
    """One agent's monitor states, fed with its StateChange items in any order (replays included).

    `categories` maps a monitor name to its category; unlisted monitors fall in `default_category`.
    """

    categories: Mapping[str, HealthCategory] = field(default_factory=dict)
    default_category: HealthCategory = DEFAULT_CATEGORY
    # Readings by object, and how many monitors are in each state: a change costs the monitors of its object, not
    # every monitor of the agent, so reading back an agent with thousands of objects stays linear.
    _readings: dict[str, dict[str, _MonitorReading]] = field(default_factory=dict)
    _objects: set[str] = field(default_factory=set)
    _in_state: Counter[HealthState] = field(default_factory=Counter)

    def category_of(self, monitor: str) -> HealthCategory:
        return self.categories.get(monitor, self.default_category)

    def discover(self, object_keys: Iterable[str]) -> None:
        """Objects known from discovery; they stay Unknown until one of their monitors reports."""
        self._objects.update(object_keys)

    def apply(self, change: StateChange) -> HealthTransition | None:
        """Take one state change; None when it is older than what the monitor already reported (a replay)."""
        monitors = self._readings.setdefault(change.object_key, {})
        previous = monitors.get(change.monitor)
        if previous is not None and change.changed_at < previous.changed_at:
            return None
        object_before = self.object_health(change.object_key).overall
        agent_before = self.overall()
        self._objects.add(change.object_key)
        if previous is not None:
            self._in_state[previous.state] -= 1
        self._in_state[change.new_state] += 1
        monitors[change.monitor] = _MonitorReading(change.new_state, change.changed_at)
        return HealthTransition(change.object_key, object_before, self.object_health(change.object_key).overall,
                                agent_before, self.overall())

    def reset(self) -> None:
        """Forget every monitor's state (leaving maintenance): Unknown until the agent reports them afresh."""
        self._readings.clear()
        self._in_state.clear()

    def monitor_state(self, object_key: str, monitor: str) -> HealthState:
        reading = self._readings.get(object_key, {}).get(monitor)
        return reading.state if reading else HealthState.UNKNOWN

    def object_health(self, object_key: str) -> ObjectHealth:
        per_category: dict[HealthCategory, list[HealthState]] = {category: [] for category in HealthCategory}
        for monitor, reading in self._readings.get(object_key, {}).items():
            per_category[self.category_of(monitor)].append(reading.state)
        categories = {category: worst_of(states) for category, states in per_category.items()}
        return ObjectHealth(object_key, categories, worst_of(categories.values()))

    def overall(self) -> HealthState:
        return worst_of(state for state, count in self._in_state.items() if count > 0)

    def rollup(self) -> AgentRollup:
        objects = {key: self.object_health(key) for key in sorted(self._objects)}
        categories = {category: worst_of(obj.categories[category] for obj in objects.values())
                      for category in HealthCategory}
        return AgentRollup(objects, categories, worst_of(categories.values()))


def untrusted(*, approval: Approval, heartbeat: HeartbeatState | None, in_maintenance: bool) -> bool:
    """Whether the monitors' last states say nothing about the agent now."""
    return (approval is not Approval.APPROVED or in_maintenance
            or heartbeat in (HeartbeatState.FAILURE, HeartbeatState.UNREACHABLE))


def agent_health(rollup: HealthState, *, approval: Approval, heartbeat: HeartbeatState | None,
                 in_maintenance: bool) -> Health:
    """The Agent's `status.health`.

    Unknown while the agent is not approved, in maintenance (Operations Manager's "not monitored"), or its
    heartbeat is lost (the last states it sent can no longer be trusted, which the console shows greyed out);
    otherwise its monitors' rollup, Unknown until one reports.
    """
    if untrusted(approval=approval, heartbeat=heartbeat, in_maintenance=in_maintenance):
        return Health.UNKNOWN
    return HEALTH_OF_STATE[rollup]


def decided_health(rollup: HealthState | None, *, approval: Approval, heartbeat: HeartbeatState | None,
                   in_maintenance: bool) -> Health | None:
    """`agent_health` when it can be decided now; `rollup` is None while the monitors' states are not read yet.

    Unknown needs no states, so it is decided at once; a rollup-dependent health waits (None: write nothing), so a
    server taking an agent over never shows Unknown for the moment it takes to read the states back.
    """
    if rollup is None:
        return Health.UNKNOWN if untrusted(approval=approval, heartbeat=heartbeat,
                                           in_maintenance=in_maintenance) else None
    return agent_health(rollup, approval=approval, heartbeat=heartbeat, in_maintenance=in_maintenance)
