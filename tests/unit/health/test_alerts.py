"""Alert lifecycle rules and storm grouping on exact sequences."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from opsmgr.db.alert_lifecycle import AlertStateError, check_transition
from opsmgr.db.alert_storms import StormCandidate, StormPolicy, burst_reached, plan_storms
from opsmgr.db.model import AlertPriority, AlertSeverity, ResolutionState

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NEW, ACK, RESOLVED, CLOSED = (int(s) for s in (ResolutionState.NEW, ResolutionState.ACKNOWLEDGED,
                                              ResolutionState.RESOLVED, ResolutionState.CLOSED))


@pytest.mark.parametrize(("current", "target"), [
    (NEW, ACK), (NEW, 17), (NEW, RESOLVED), (NEW, CLOSED), (ACK, NEW), (ACK, 17), (17, ACK), (ACK, RESOLVED),
    (ACK, CLOSED), (RESOLVED, CLOSED)])
def test_allowed_transitions(current: int, target: int) -> None:
    assert check_transition("abcd1234", current, target) is True


def test_setting_the_state_an_alert_has_is_a_no_op() -> None:
    assert check_transition("abcd1234", ACK, ACK) is False
    assert check_transition("abcd1234", CLOSED, CLOSED) is False


@pytest.mark.parametrize(("current", "target", "message"), [
    (CLOSED, ACK, "alert abcd1234 is Closed (255), which is final"),
    (CLOSED, RESOLVED, "alert abcd1234 is Closed (255), which is final"),
    (RESOLVED, ACK, "alert abcd1234 is Resolved (254) and cannot become Acknowledged (249)"),
    (RESOLVED, NEW, "cannot become New (0): a resolved alert is only closed"),
    (NEW, 251, "resolution state 251 does not exist: use New (0), a custom state (1-248)"),
])
def test_refused_transitions_name_the_value_and_the_fix(current: int, target: int, message: str) -> None:
    with pytest.raises(AlertStateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_transition("abcd1234", current, target)


def candidate(agent: int, second: int, source: str = "FreeSpaceMonitor",
              severity: AlertSeverity = AlertSeverity.WARNING) -> StormCandidate:
    return StormCandidate(uuid.UUID(int=agent * 1000 + second), f"web{agent:02}", source, "Low disk space", severity,
                          AlertPriority.MEDIUM, T0 + timedelta(seconds=second))


POLICY = StormPolicy(threshold_agents=3, window=timedelta(seconds=60))


def test_a_burst_needs_distinct_agents_inside_one_window() -> None:
    assert not burst_reached([candidate(1, 0), candidate(1, 5), candidate(1, 9), candidate(2, 10)], POLICY)
    assert not burst_reached([candidate(1, 0), candidate(2, 50), candidate(3, 61)], POLICY)
    assert burst_reached([candidate(1, 0), candidate(2, 50), candidate(3, 60)], POLICY)
    assert burst_reached([candidate(1, 0), candidate(2, 100), candidate(3, 130), candidate(4, 140)], POLICY)


def test_a_burst_opens_one_storm_per_source_listing_every_member() -> None:
    burst = [candidate(3, 20, severity=AlertSeverity.CRITICAL), candidate(1, 0), candidate(2, 10),
             candidate(4, 30, source="CpuMonitor")]
    plan = plan_storms(burst, {}, POLICY)
    assert plan.joins == {}
    (storm,) = plan.opens
    assert storm.source == "FreeSpaceMonitor"
    assert storm.opened_at == T0
    assert storm.severity is AlertSeverity.CRITICAL
    assert storm.members == (candidate(1, 0).alert_id, candidate(2, 10).alert_id, candidate(3, 20).alert_id)


def test_later_occurrences_join_the_active_storm_of_their_source() -> None:
    storm_id = uuid.uuid4()
    plan = plan_storms([candidate(7, 200), candidate(8, 500, source="CpuMonitor")],
                       {"FreeSpaceMonitor": storm_id}, POLICY)
    assert plan.opens == ()
    assert plan.joins == {storm_id: (candidate(7, 200).alert_id,)}


def test_a_storm_policy_refuses_a_threshold_of_one_agent() -> None:
    with pytest.raises(ValueError, match="a storm spans 2 agents or more"):
        StormPolicy(threshold_agents=1)
