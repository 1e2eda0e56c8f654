"""The Agent's `status.health` as the watching server decides it, on exact sequences: monitor states read back from
the DB and committed by ingest, the rules that make it Unknown, and status patches written only on change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from opsmgr.api.agent import Approval, Connection, Health, HeartbeatState
from opsmgr.db.health_model import decided_health
from opsmgr.db.model import HealthState, StateChange
from opsmgr.server.agent_health import AgentHealthBook
from opsmgr.server.agent_status import ObservedAgent, status_patch
from opsmgr.server.heartbeat_watcher import HeartbeatStatus

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
H, W, C, U = HealthState.HEALTHY, HealthState.WARNING, HealthState.CRITICAL, HealthState.UNKNOWN
AGENT = "web01.contoso.test"


def change(minute: int, monitor: str, new: HealthState, old: HealthState = U, obj: str = "Computer") -> StateChange:
    return StateChange(T0 + timedelta(minutes=minute), obj, monitor, old, new)


def health(book: AgentHealthBook, *, approval: Approval = Approval.APPROVED,
           heartbeat: HeartbeatState | None = HeartbeatState.OK, maintenance: bool = False) -> Health | None:
    return decided_health(book.rollup(AGENT), approval=approval, heartbeat=heartbeat, in_maintenance=maintenance)


def test_nothing_is_decided_from_the_rollup_until_the_states_were_read_back() -> None:
    book = AgentHealthBook(settle=15)
    book.take(AGENT, 100.0)
    assert book.committed(AGENT, [change(5, "Cpu", C)]) is False  # kept, but not yet the whole picture
    assert health(book) is None
    assert book.read(AGENT, [change(1, "Disk", W), change(0, "Cpu", H)], 100.5) is True
    assert health(book) is Health.CRITICAL  # the newer committed change wins over the older row read back


def test_unknown_needs_no_states_so_it_is_decided_before_the_read() -> None:
    book = AgentHealthBook()
    book.take(AGENT, 0.0)
    assert health(book, heartbeat=HeartbeatState.FAILURE) is Health.UNKNOWN
    assert health(book, maintenance=True) is Health.UNKNOWN
    assert health(book, approval=Approval.REJECTED) is Health.UNKNOWN


def test_a_sequence_of_committed_changes_reports_only_those_that_move_the_rollup() -> None:
    book = AgentHealthBook()
    book.take(AGENT, 0.0)
    book.read(AGENT, [], 0.0)
    assert health(book) is Health.UNKNOWN  # nothing monitored yet
    seen = []
    for item in [change(1, "Cpu", H), change(2, "Disk", H), change(3, "Cpu", C, H), change(4, "Disk", W, H),
                 change(5, "Cpu", H, C), change(6, "Disk", H, W), change(7, "Memory", U)]:
        seen.append((book.committed(AGENT, [item]), health(book)))
    assert seen == [(True, Health.HEALTHY), (False, Health.HEALTHY), (True, Health.CRITICAL),
                    (False, Health.CRITICAL), (True, Health.WARNING), (True, Health.HEALTHY),
                    (False, Health.HEALTHY)]


def test_a_replayed_older_change_moves_nothing() -> None:
    book = AgentHealthBook()
    book.take(AGENT, 0.0)
    book.read(AGENT, [change(5, "Cpu", H, C)], 0.0)
    assert book.committed(AGENT, [change(3, "Cpu", C, H)]) is False
    assert health(book) is Health.HEALTHY


def test_a_hand_over_reads_again_after_it_settled_and_catches_late_commits_of_the_previous_server() -> None:
    book = AgentHealthBook(settle=15)
    book.take(AGENT, 100.0)
    assert book.reads_due(99.0) == [] and book.reads_due(100.0) == [AGENT]
    book.read(AGENT, [change(0, "Cpu", H)], 100.2)
    assert book.reads_due(110.0) == []
    assert book.reads_due(115.0) == [AGENT]
    assert book.read(AGENT, [change(2, "Cpu", C, H)], 115.1) is True
    assert health(book) is Health.CRITICAL
    assert book.reads_due(1000.0) == []


def test_an_agent_dropped_while_its_read_was_under_way_stays_dropped() -> None:
    book = AgentHealthBook()
    book.take(AGENT, 0.0)
    book.drop(AGENT)
    assert book.read(AGENT, [change(0, "Cpu", C)], 0.0) is False
    assert AGENT not in book and book.rollup(AGENT) is None
    assert book.committed(AGENT, [change(1, "Cpu", C)]) is False


def test_maintenance_and_a_lost_heartbeat_hide_the_rollup_and_keep_it_for_afterwards() -> None:
    """The agent reports only what changed from what the server last heard, so the states must outlive the window."""
    book = AgentHealthBook()
    book.take(AGENT, 0.0)
    book.read(AGENT, [change(0, "Cpu", C)], 0.0)
    assert [health(book, maintenance=True), health(book), health(book, heartbeat=HeartbeatState.FAILURE),
            health(book, heartbeat=HeartbeatState.UNREACHABLE), health(book)] == [
        Health.UNKNOWN, Health.CRITICAL, Health.UNKNOWN, Health.UNKNOWN, Health.CRITICAL]


def observed(decided: Health | None) -> ObservedAgent:
    return ObservedAgent(HeartbeatStatus.OK, Connection.CONNECTED, "ms-0", T0, None, False, decided)


def test_health_is_written_when_it_changed_and_left_alone_when_undecided() -> None:
    stored: dict[str, Any] = status_patch({}, observed(Health.CRITICAL), T0, heartbeat_every=timedelta(minutes=3))
    assert stored["health"] == "Critical"
    assert status_patch(stored, observed(Health.CRITICAL), T0, heartbeat_every=timedelta(minutes=3)) == {}
    assert status_patch(stored, observed(None), T0, heartbeat_every=timedelta(minutes=3)) == {}
    assert status_patch(stored, observed(Health.HEALTHY), T0, heartbeat_every=timedelta(minutes=3)) == {
        "health": "Healthy"}
