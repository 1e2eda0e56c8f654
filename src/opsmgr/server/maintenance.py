"""Maintenance mode (pure): the Agent's one window, and what the watcher, alerting and health do about it.

The window lives in one place, `AgentSpec.maintenance`, and one predicate, `MaintenanceWindow.is_open`: the agent
reads it from its spec, the server calls `decide_maintenance` whenever the Agent changes and at each
`next_boundary`, and ingest filters alerts with `suppressed_by_maintenance`.

Semantics (Operations Manager's): while the window is open the agent is "not monitored": its health is Unknown,
the health service watcher raises nothing, and alerts raised inside the window are dropped (counted, never
notified). Alerts already open stay as they are, because people may be working on them. Leaving the window
re-evaluates state: the monitor states from before are forgotten (health stays Unknown until the agent reports
afresh, as a monitor re-initialises), the agent is asked to send every monitor's current state, and the watcher
gives the agent a full heartbeat window before judging it.

Alerts are judged by the moment they were raised, not by when they arrive, so a replay after the window closed
neither resurrects an alert from inside it nor loses one from outside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from opsmgr.api.agent import MaintenanceWindow
from opsmgr.db.model import Alert, Item, ResolutionState


class MaintenanceTransition(StrEnum):
    ENTERED = "Entered"
    LEFT = "Left"


@dataclass(frozen=True)
class MaintenanceDecision:
    """What the server does for one agent now; every flag is for one caller."""

    in_maintenance: bool  # the Agent's status.maintenance and HeartbeatWatcher.set_maintenance
    transition: MaintenanceTransition | None  # None when nothing changed since `was_in_maintenance`
    next_boundary: datetime | None  # when to decide again (the window opens or closes), None when never
    reset_health: bool  # HealthModel.reset(): forget the states from before the window
    request_state_resync: bool  # ask the agent for every monitor's current state


def next_boundary(window: MaintenanceWindow | None, now: datetime) -> datetime | None:
    """The next moment after `now` when the window opens or closes."""
    if window is None:
        return None
    for moment in (window.start, window.end):
        if moment is not None and moment > now:
            return moment
    return None


def decide_maintenance(window: MaintenanceWindow | None, was_in_maintenance: bool,
                       now: datetime) -> MaintenanceDecision:
    """Whether the agent is in maintenance now, and what changes if it just entered or left."""
    inside = window is not None and window.is_open(now)
    transition = None
    if inside and not was_in_maintenance:
        transition = MaintenanceTransition.ENTERED
    elif was_in_maintenance and not inside:
        transition = MaintenanceTransition.LEFT
    leaving = transition is MaintenanceTransition.LEFT
    return MaintenanceDecision(inside, transition, next_boundary(window, now), reset_health=leaving,
                               request_state_resync=leaving)


def suppressed_by_maintenance(window: MaintenanceWindow | None, alert: Alert) -> bool:
    """A new alert raised inside the window is dropped; resolutions always pass, so nothing stays open."""
    return (window is not None and alert.resolution_state is ResolutionState.NEW
            and window.is_open(alert.raised_at))


def admit_items(window: MaintenanceWindow | None, items: Iterable[Item]) -> tuple[tuple[Item, ...], int]:
    """A batch's items without the alerts maintenance suppresses, and how many were suppressed (to count)."""
    kept: list[Item] = []
    suppressed = 0
    for item in items:
        if isinstance(item, Alert) and suppressed_by_maintenance(window, item):
            suppressed += 1
        else:
            kept.append(item)
    return tuple(kept), suppressed
