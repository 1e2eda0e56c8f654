"""The health model on exact sequences of state changes: worst-of per category, per object, per agent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opsmgr.api.agent import Approval, Health, HeartbeatState
from opsmgr.db.health_model import HealthCategory, HealthModel, agent_health, worst_of
from opsmgr.db.model import HealthState, StateChange

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
H, W, C, U = HealthState.HEALTHY, HealthState.WARNING, HealthState.CRITICAL, HealthState.UNKNOWN


def change(minute: int, obj: str, monitor: str, new: HealthState, old: HealthState = U) -> StateChange:
    return StateChange(T0 + timedelta(minutes=minute), obj, monitor, old, new)


def model() -> HealthModel:
    return HealthModel(categories={"HeartbeatMonitor": HealthCategory.AVAILABILITY,
                                   "CertificateExpiry": HealthCategory.SECURITY})


def test_worst_of_ranks_critical_over_warning_over_healthy_and_skips_unknown() -> None:
    assert worst_of([H, W, U]) is W
    assert worst_of([H, C, W]) is C
    assert worst_of([U, H]) is H
    assert worst_of([U, U]) is U
    assert worst_of([]) is U


def test_a_sequence_of_changes_rolls_up_per_category_object_and_agent() -> None:
    health = model()
    health.discover(["Linux.Computer:web01", "Linux.FileSystem:/data"])
    seen = []
    for item in [change(0, "Linux.Computer:web01", "CpuMonitor", H),
                 change(1, "Linux.FileSystem:/data", "FreeSpace", W),
                 change(2, "Linux.Computer:web01", "CertificateExpiry", C),
                 change(3, "Linux.Computer:web01", "CertificateExpiry", H, C),
                 change(4, "Linux.FileSystem:/data", "FreeSpace", H, W)]:
        transition = health.apply(item)
        assert transition is not None
        seen.append((transition.object_after, transition.agent_before, transition.agent_after))
    assert seen == [(H, U, H), (W, H, W), (C, W, C), (H, C, W), (H, W, H)]
    rollup = health.rollup()
    assert rollup.overall is H
    assert rollup.categories == {HealthCategory.AVAILABILITY: U, HealthCategory.PERFORMANCE: H,
                                 HealthCategory.CONFIGURATION: U, HealthCategory.SECURITY: H}
    assert rollup.objects["Linux.Computer:web01"].categories[HealthCategory.SECURITY] is H


def test_categories_roll_up_separately_and_the_object_takes_the_worst() -> None:
    health = model()
    health.apply(change(0, "Linux.Computer:web01", "HeartbeatMonitor", C))
    health.apply(change(0, "Linux.Computer:web01", "CpuMonitor", W))
    web = health.object_health("Linux.Computer:web01")
    assert web.categories[HealthCategory.AVAILABILITY] is C
    assert web.categories[HealthCategory.PERFORMANCE] is W
    assert web.overall is C


def test_a_discovered_object_without_monitors_is_unknown_and_hides_nothing() -> None:
    health = model()
    health.discover(["Linux.FileSystem:/var"])
    health.apply(change(0, "Linux.Computer:web01", "CpuMonitor", W))
    rollup = health.rollup()
    assert rollup.objects["Linux.FileSystem:/var"].overall is U
    assert rollup.overall is W


def test_a_replayed_older_change_does_not_overwrite_a_newer_one() -> None:
    health = model()
    health.apply(change(5, "Linux.Computer:web01", "CpuMonitor", H, C))
    assert health.apply(change(1, "Linux.Computer:web01", "CpuMonitor", C)) is None
    assert health.overall() is H


def test_reset_forgets_every_state_until_the_agent_reports_again() -> None:
    health = model()
    health.apply(change(0, "Linux.Computer:web01", "CpuMonitor", C))
    health.reset()
    assert health.overall() is U
    transition = health.apply(change(9, "Linux.Computer:web01", "CpuMonitor", H))
    assert transition is not None and transition.agent_changed


@pytest.mark.parametrize(("approval", "heartbeat", "maintenance", "expected"), [
    (Approval.APPROVED, HeartbeatState.OK, False, Health.WARNING),
    (Approval.APPROVED, None, False, Health.WARNING),
    (Approval.PENDING, HeartbeatState.OK, False, Health.UNKNOWN),
    (Approval.APPROVED, HeartbeatState.OK, True, Health.UNKNOWN),
    (Approval.APPROVED, HeartbeatState.FAILURE, False, Health.UNKNOWN),
    (Approval.APPROVED, HeartbeatState.UNREACHABLE, False, Health.UNKNOWN),
])
def test_agent_health_is_the_rollup_unless_it_cannot_be_trusted(approval: Approval, heartbeat: HeartbeatState | None,
                                                                maintenance: bool, expected: Health) -> None:
    assert agent_health(W, approval=approval, heartbeat=heartbeat, in_maintenance=maintenance) is expected
