"""Threshold monitors change state, alert and resolve exactly as specified, and stay silent in maintenance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from opsmgr.agent.monitors import ReportedHealth, ThresholdMonitor, classify, next_state
from opsmgr.agent.sink import HealthState
from opsmgr.api.management_pack import Monitor

H, W, C, U = HealthState.HEALTHY, HealthState.WARNING, HealthState.CRITICAL, HealthState.UNKNOWN
T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "Linux.Computer:web01.contoso.test"


def cpu_monitor(**overrides: Any) -> Monitor:
    body: dict[str, Any] = {
        "name": "processor-utilization", "displayName": "Processor utilization",
        "performance": {"object": "Processor", "counter": "% Processor Time", "instance": "_Total"},
        "direction": "Above", "warningThreshold": 80, "criticalThreshold": 95, "alertOn": "Critical",
    }
    body.update(overrides)
    return Monitor.model_validate(body)


def free_space_monitor(**overrides: Any) -> Monitor:
    body: dict[str, Any] = {
        "name": "root-free-space", "performance": {"object": "Logical Disk", "counter": "% Free Space",
                                                   "instance": "/"},
        "direction": "Below", "warningThreshold": 20, "criticalThreshold": 10, "alertOn": "Warning",
        "alertPriority": "High",
    }
    body.update(overrides)
    return Monitor.model_validate(body)


def feed(monitor: ThresholdMonitor, values: list[float], maintenance: frozenset[int] = frozenset()) -> list[str]:
    """Everything the monitor sends, as short strings: 'state 1->3' and 'alert new critical'/'alert resolved'."""
    out: list[str] = []
    for index, value in enumerate(values):
        result = monitor.evaluate(T0 + timedelta(minutes=index), value, in_maintenance=index in maintenance)
        for item in result.items:
            if item.HasField("state"):
                out.append(f"{index}: state {item.state.old_state}->{item.state.new_state}")
            else:
                kind = "resolved" if item.alert.resolution_state == 254 else "new"
                out.append(f"{index}: alert {kind} sev{item.alert.severity}")
    return out


def test_thresholds_are_reached_at_equality_in_the_monitors_direction() -> None:
    above, below = cpu_monitor(), free_space_monitor()
    assert [classify(above, v) for v in (79.9, 80, 94.9, 95, 100)] == [H, W, W, C, C]
    assert [classify(below, v) for v in (50, 20, 10.1, 10, 0)] == [H, W, W, C, C]


def test_two_state_monitor_without_warning_threshold() -> None:
    monitor = cpu_monitor(warningThreshold=None)
    assert [classify(monitor, v) for v in (94, 95)] == [H, C]


def test_first_healthy_sample_reports_unknown_to_healthy_without_alert() -> None:
    monitor = ThresholdMonitor(cpu_monitor(), object_key=KEY, source="processor-utilization")
    assert feed(monitor, [10, 20]) == ["0: state 0->1"]


def test_critical_raises_an_alert_and_healthy_resolves_it() -> None:
    monitor = ThresholdMonitor(cpu_monitor(), object_key=KEY, source="processor-utilization")
    assert feed(monitor, [10, 85, 96, 97, 50]) == [
        "0: state 0->1",
        "1: state 1->2",  # Warning does not alert: alertOn is Critical
        "2: state 2->3", "2: alert new sev2",
        "4: state 3->1", "4: alert resolved sev2",
    ]


def test_critical_to_warning_resolves_an_alert_raised_on_critical() -> None:
    monitor = ThresholdMonitor(cpu_monitor(), object_key=KEY, source="processor-utilization")
    assert feed(monitor, [99, 85]) == ["0: state 0->3", "0: alert new sev2", "1: state 3->2", "1: alert resolved sev2"]


def test_alert_on_warning_raises_for_each_worse_state_and_resolves_once() -> None:
    monitor = ThresholdMonitor(free_space_monitor(), object_key=KEY, source="root-free-space")
    assert feed(monitor, [50, 15, 5, 15, 60]) == [
        "0: state 0->1",
        "1: state 1->2", "1: alert new sev1",
        "2: state 2->3", "2: alert new sev2",
        "3: state 3->2", "3: alert new sev1",
        "4: state 2->1", "4: alert resolved sev1",
    ]


def test_alert_on_none_never_alerts() -> None:
    monitor = ThresholdMonitor(cpu_monitor(alertOn="None"), object_key=KEY, source="p")
    assert feed(monitor, [99, 10]) == ["0: state 0->3", "1: state 3->1"]


def test_consecutive_samples_delay_getting_worse_but_not_recovering() -> None:
    monitor = ThresholdMonitor(cpu_monitor(consecutiveSamples=3), object_key=KEY, source="p")
    assert feed(monitor, [10, 99, 99, 50, 99, 99, 99, 10]) == [
        "0: state 0->1",
        "6: state 1->3", "6: alert new sev2",  # three in a row beyond 95 (index 3 broke the first run)
        "7: state 3->1", "7: alert resolved sev2",  # recovery takes one sample
    ]


def test_consecutive_samples_take_the_mildest_state_of_the_run() -> None:
    monitor = ThresholdMonitor(cpu_monitor(consecutiveSamples=3), object_key=KEY, source="p")
    assert feed(monitor, [10, 99, 85, 99, 99, 99]) == ["0: state 0->1", "3: state 1->2", "5: state 2->3",
                                                      "5: alert new sev2"]


def test_unknown_stays_until_enough_unhealthy_samples() -> None:
    assert next_state(U, [C], 3) is U
    assert next_state(U, [C, W, C], 3) is W
    assert next_state(U, [C, H], 3) is H


def test_maintenance_suppresses_state_changes_and_alerts_then_reports_the_net_change() -> None:
    monitor = ThresholdMonitor(cpu_monitor(), object_key=KEY, source="p")
    # Critical and back to healthy inside maintenance: nothing at all. Critical inside, still critical after: one
    # change from Healthy with its alert, on the first sample after maintenance.
    assert feed(monitor, [10, 99, 10, 99, 99, 99], maintenance=frozenset({1, 2, 3, 4})) == [
        "0: state 0->1", "5: state 1->3", "5: alert new sev2"]


def test_an_alert_open_before_maintenance_resolves_after_it() -> None:
    monitor = ThresholdMonitor(cpu_monitor(), object_key=KEY, source="p")
    assert feed(monitor, [99, 10, 10], maintenance=frozenset({1})) == [
        "0: state 0->3", "0: alert new sev2", "2: state 3->1", "2: alert resolved sev2"]


def test_a_changed_definition_carries_what_the_server_heard() -> None:
    first = ThresholdMonitor(cpu_monitor(), object_key=KEY, source="p")
    feed(first, [99])
    second = ThresholdMonitor(cpu_monitor(criticalThreshold=99.5), object_key=KEY, source="p",
                              reported=first.reported)
    assert feed(second, [99]) == ["0: state 3->2", "0: alert resolved sev2"]


def test_a_removed_monitor_resolves_its_open_alert() -> None:
    monitor = ThresholdMonitor(cpu_monitor(), object_key=KEY, source="p")
    feed(monitor, [99])
    items = monitor.retire(T0)
    assert [(i.alert.source, i.alert.resolution_state) for i in items] == [("p", 254)]
    assert monitor.retire(T0) == []


def test_alert_carries_name_priority_and_a_readable_description() -> None:
    monitor = ThresholdMonitor(free_space_monitor(), object_key=KEY, source="root-free-space")
    item = monitor.evaluate(T0, 7.5).items[1].alert
    assert (item.name, item.source, item.object_key, item.priority, item.severity) == (
        "root-free-space", "root-free-space", KEY, 2, 2)
    assert item.description == "Logical Disk % Free Space (/) is 7.5, at or below the Critical threshold 10"


def test_transition_is_reported_for_tasks() -> None:
    monitor = ThresholdMonitor(cpu_monitor(), object_key=KEY, source="p")
    transition = monitor.evaluate(T0, 99).transition
    assert transition is not None
    assert (transition.monitor, transition.old, transition.new, transition.value) == ("p", U, C, 99)
    assert monitor.evaluate(T0, 99).transition is None
    assert ReportedHealth() == ReportedHealth(U, None)
