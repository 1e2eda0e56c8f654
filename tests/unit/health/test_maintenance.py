"""Maintenance decisions on exact sequences: entering, staying, leaving, and which alerts it suppresses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opsmgr.api.agent import MaintenanceWindow
from opsmgr.db.model import Alert, AlertSeverity, Item, PerformanceSample, ResolutionState
from opsmgr.server.maintenance import MaintenanceTransition, admit_items, decide_maintenance, next_boundary

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WINDOW = MaintenanceWindow(start=T0 + timedelta(hours=1), end=T0 + timedelta(hours=2))


def alert(minute: int, state: ResolutionState = ResolutionState.NEW) -> Alert:
    return Alert(T0 + timedelta(minutes=minute), "Linux.Computer:web01", "CpuMonitor", "CPU high", "",
                 AlertSeverity.CRITICAL, resolution_state=state)


def test_a_window_is_entered_kept_and_left_with_the_right_actions() -> None:
    was = False
    seen = []
    for minutes in (0, 60, 90, 120, 150):
        decision = decide_maintenance(WINDOW, was, T0 + timedelta(minutes=minutes))
        seen.append((decision.in_maintenance, decision.transition, decision.reset_health,
                     decision.request_state_resync, decision.next_boundary))
        was = decision.in_maintenance
    start, end = WINDOW.start, WINDOW.end
    assert seen == [
        (False, None, False, False, start),
        (True, MaintenanceTransition.ENTERED, False, False, end),
        (True, None, False, False, end),
        (False, MaintenanceTransition.LEFT, True, True, None),
        (False, None, False, False, None),
    ]


def test_a_removed_window_leaves_maintenance() -> None:
    decision = decide_maintenance(None, True, T0)
    assert decision.transition is MaintenanceTransition.LEFT and decision.reset_health


def test_a_window_without_start_opens_at_once_and_next_boundary_is_its_end() -> None:
    window = MaintenanceWindow(end=T0 + timedelta(minutes=30))
    assert decide_maintenance(window, False, T0).transition is MaintenanceTransition.ENTERED
    assert next_boundary(window, T0) == window.end


def test_alerts_raised_inside_the_window_are_suppressed_by_their_own_time_not_arrival() -> None:
    sample = PerformanceSample(T0 + timedelta(minutes=70), "Linux.Computer:web01", "Processor", "% Processor Time",
                               "_Total", 99.0)
    items: list[Item] = [alert(30), alert(70), sample, alert(80, ResolutionState.RESOLVED), alert(125)]
    kept, suppressed = admit_items(WINDOW, items)
    assert suppressed == 1
    assert kept == (items[0], sample, items[3], items[4])
    assert admit_items(None, items) == (tuple(items), 0)
