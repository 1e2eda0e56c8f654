"""Threshold monitors (pure): samples to Healthy/Warning/Critical, state changes, alerts and their resolution.

How a state changes:
- Leaving Unknown for Healthy, and any improvement (Critical -> Warning -> Healthy), takes one sample: recovery
  is reported as soon as it is seen.
- Getting worse takes `consecutive_samples` samples in a row beyond a threshold; the new state is the mildest of
  them, so one spike in a run of warnings does not make the monitor Critical.
- In maintenance the monitor keeps evaluating but reports nothing; once maintenance ends, the next sample reports
  the one change from what the server last heard, and raises or resolves the alert accordingly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from opsmgr.agent import sink
from opsmgr.agent.sink import HealthState, ResolutionState
from opsmgr.api.management_group import AlertSeverity
from opsmgr.api.management_pack import AlertOn, Monitor, ThresholdDirection
from opsmgr.protocol import agent_channel_pb2 as pb

ALERT_LEVEL = {AlertOn.WARNING: HealthState.WARNING, AlertOn.CRITICAL: HealthState.CRITICAL}
SEVERITY_OF = {HealthState.WARNING: AlertSeverity.WARNING, HealthState.CRITICAL: AlertSeverity.CRITICAL}


def classify(monitor: Monitor, value: float) -> HealthState:
    """The state one sample indicates; a threshold is reached at equality ("the value at which ...")."""
    def worse(threshold: float) -> bool:
        return value >= threshold if monitor.direction is ThresholdDirection.ABOVE else value <= threshold

    if worse(monitor.critical_threshold):
        return HealthState.CRITICAL
    if monitor.warning_threshold is not None and worse(monitor.warning_threshold):
        return HealthState.WARNING
    return HealthState.HEALTHY


def next_state(current: HealthState, recent: list[HealthState], needed: int) -> HealthState:
    """The monitor's state after the newest sample, `recent` being the last samples' states, newest last."""
    newest = recent[-1]
    if newest is HealthState.HEALTHY and current is HealthState.UNKNOWN:
        return HealthState.HEALTHY
    if current is not HealthState.UNKNOWN and newest < current:
        return newest
    window = recent[-needed:]
    if len(window) == needed and min(window) > max(current, HealthState.HEALTHY):
        return min(window)
    return current


@dataclass(frozen=True, slots=True)
class Transition:
    """A reported state change, for the tasks that run on one (diagnostic and recovery)."""

    at: datetime
    monitor: str
    old: HealthState
    new: HealthState
    value: float


@dataclass(slots=True)
class MonitorOutcome:
    items: list[pb.Item] = field(default_factory=list)
    transition: Transition | None = None


@dataclass(frozen=True, slots=True)
class ReportedHealth:
    """What the server last heard from a monitor; carried over when the monitor's definition changes."""

    state: HealthState = HealthState.UNKNOWN
    open_alert: HealthState | None = None  # the state whose alert is open, if any


class ThresholdMonitor:
    """One monitor on one counter instance. `source` names it on the wire (StateChange.monitor, Alert.source)."""

    def __init__(self, monitor: Monitor, *, object_key: str, source: str,
                 reported: ReportedHealth = ReportedHealth()) -> None:
        self.monitor = monitor
        self.object_key = object_key
        self.source = source
        self.state = reported.state  # the evaluated state, also in maintenance
        self.reported = reported
        self._recent: deque[HealthState] = deque(maxlen=monitor.consecutive_samples)

    def evaluate(self, at: datetime, value: float, *, in_maintenance: bool = False) -> MonitorOutcome:
        self._recent.append(classify(self.monitor, value))
        self.state = next_state(self.state, list(self._recent), self.monitor.consecutive_samples)
        if in_maintenance or self.state == self.reported.state:
            return MonitorOutcome()
        old = self.reported.state
        items = [sink.state_change(at, object_key=self.object_key, monitor=self.source, old=old, new=self.state)]
        open_alert = self.reported.open_alert
        level = ALERT_LEVEL.get(self.monitor.alert_on)
        if level is not None and self.state >= level:
            items.append(self._alert(at, self.state, value, ResolutionState.NEW))
            open_alert = self.state
        elif open_alert is not None:
            items.append(self._alert(at, open_alert, value, ResolutionState.RESOLVED))
            open_alert = None
        self.reported = ReportedHealth(self.state, open_alert)
        return MonitorOutcome(items, Transition(at, self.source, old, self.state, value))

    def retire(self, at: datetime) -> list[pb.Item]:
        """Items that close what this monitor left open when it is removed: its alert resolves."""
        if self.reported.open_alert is None:
            return []
        item = self._alert(at, self.reported.open_alert, None, ResolutionState.RESOLVED)
        self.reported = ReportedHealth(self.reported.state, None)
        return [item]

    def _alert(self, at: datetime, state: HealthState, value: float | None, resolution: ResolutionState) -> pb.Item:
        monitor = self.monitor
        counter = monitor.performance
        what = f"{counter.object} {counter.counter}" + (f" ({counter.instance})" if counter.instance else "")
        if resolution is ResolutionState.RESOLVED:
            description = f"{what} is back to {self.state.name.title()}" + (
                f" at {value:g}" if value is not None else " (the monitor was removed)")
        else:
            threshold = monitor.critical_threshold if state is HealthState.CRITICAL else monitor.warning_threshold
            side = "above" if monitor.direction is ThresholdDirection.ABOVE else "below"
            description = f"{what} is {value:g}, at or {side} the {state.name.title()} threshold {threshold:g}"
        return sink.alert(at, object_key=self.object_key, source=self.source,
                          name=monitor.display_name or monitor.name, description=description,
                          severity=SEVERITY_OF[state], priority=monitor.alert_priority, resolution=resolution)
