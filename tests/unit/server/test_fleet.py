"""Which live server watches which agent, and who is live by the Leases an observer saw change."""

from __future__ import annotations

from collections import Counter

from opsmgr.protocol.rendezvous import rank
from opsmgr.server.fleet import LeaseSighting, live_members, observe, watcher_of

SERVERS = ("ms-0", "ms-1", "ms-2")
AGENTS = [f"agent-{n}" for n in range(3000)]


def test_an_agent_is_watched_where_its_stream_is_while_that_server_lives() -> None:
    assert watcher_of("agent-1", SERVERS, connected_to="ms-2") == "ms-2"


def test_an_agent_connected_to_a_dead_server_is_watched_by_its_first_live_server() -> None:
    live = ("ms-0", "ms-1")
    assert watcher_of("agent-1", live, connected_to="ms-2") == rank("agent-1", live)[0]


def test_the_watcher_of_a_disconnected_agent_is_its_operator_primary_when_every_server_lives() -> None:
    # The operator ranks with the same hash, so the watcher is where the agent connects first.
    assert all(watcher_of(agent, SERVERS, None) == rank(agent, SERVERS)[0] for agent in AGENTS[:100])


def test_no_live_server_watches_nothing() -> None:
    assert watcher_of("agent-1", (), None) is None


def test_every_agent_has_exactly_one_watcher_and_the_load_is_even() -> None:
    load = Counter(watcher_of(agent, SERVERS, None) for agent in AGENTS)
    assert set(load) == set(SERVERS)
    assert min(load.values()) > len(AGENTS) / 3 * 0.85


def test_when_a_server_dies_only_its_agents_move() -> None:
    before = {agent: watcher_of(agent, SERVERS, None) for agent in AGENTS}
    after = {agent: watcher_of(agent, ("ms-0", "ms-1"), None) for agent in AGENTS}
    moved = {agent for agent in AGENTS if before[agent] != after[agent]}
    assert moved == {agent for agent in AGENTS if before[agent] == "ms-2"}


def test_a_lease_renewed_within_its_duration_is_live_by_the_observers_clock() -> None:
    sightings = observe({}, [("ms-1", "t1", 3.0), ("ms-2", "t1", 3.0)], now=100.0)
    sightings = observe(sightings, [("ms-1", "t2", 3.0), ("ms-2", "t1", 3.0)], now=102.0)
    assert live_members(sightings, 102.9, "ms-0") == {"ms-0", "ms-1", "ms-2"}
    # ms-2's renewTime has not moved since 100.0: dead 3 s later, whatever its clock wrote.
    assert live_members(sightings, 103.5, "ms-0") == {"ms-0", "ms-1"}


def test_a_deleted_lease_is_gone_at_once_and_the_observer_always_counts_itself() -> None:
    sightings = observe({"ms-1": LeaseSighting("t1", 100.0, 3.0)}, [], now=100.5)
    assert live_members(sightings, 100.5, "ms-0") == {"ms-0"}


def test_a_lease_seen_for_the_first_time_gets_a_full_duration_of_grace() -> None:
    sightings = observe({}, [("ms-1", "2001-01-01T00:00:00Z", 15.0)], now=500.0)
    assert "ms-1" in live_members(sightings, 514.0, "ms-0")
    assert "ms-1" not in live_members(sightings, 516.0, "ms-0")
